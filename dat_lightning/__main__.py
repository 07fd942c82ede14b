"""``python -m dat_lightning fit --config recipes/digits_dat.yaml``."""

from dat_lightning.cli import main

if __name__ == "__main__":
    main()
