"""Entry point of the PyInstaller bundle: the same `ddpm-gui` command as the pip install's script."""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()  # `datasets` may start worker processes; a frozen app must say so first
    from ddpm_gui.cli import main

    sys.exit(main())
