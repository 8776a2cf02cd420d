"""Generated documentation of the machines: Markdown with Mermaid, Graphviz DOT, and SVG."""

from hypha_sm.diagrams.render import (
    dot_to_svg,
    render_all,
    render_dot,
    render_index,
    render_mermaid_page,
    stale_files,
    write_all,
)

__all__ = [
    "dot_to_svg",
    "render_all",
    "render_dot",
    "render_index",
    "render_mermaid_page",
    "stale_files",
    "write_all",
]
