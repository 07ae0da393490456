"""napari plugin of uptrack: open a results store, inspect and correct cells and tracks,
tune detection and run the pipeline (contributions listed in ``napari.yaml``).

The plugin imports ``pipeline``; the pipeline never imports the plugin.
"""
