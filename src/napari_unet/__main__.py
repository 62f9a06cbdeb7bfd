"""``python -m napari_unet``: the ``napari-unet`` command, where console scripts are not on PATH."""

from .cli import run

if __name__ == "__main__":
    run()
