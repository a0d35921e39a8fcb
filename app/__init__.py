"""The CraftLab Gradio app: ``craftlab app`` or ``python -m app`` (see :func:`app.main.launch`)."""
