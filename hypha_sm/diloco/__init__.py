"""DiLoCo's arithmetic on files: streaming safetensors, the parameter server's outer step.

Needs torch (the ``train`` extra); nothing here touches the network or a clock.
"""
