"""The node's imperative shell: executors, the job bridge, and (next) the event loop."""
