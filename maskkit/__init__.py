"""maskkit: a command-line toolkit for mask / gender / age face-classification competitions.

The package is layered; a module imports its own layer and those below it, never one above
(tests/test_imports.py enforces it and names the edge that breaks it):

    contract.errors < options < contract < data < engine < commands < cli

- options: the option vocabulary (TrainOptions and its flags, choices, ranges); no heavy imports.
- contract/: the file contract of docs/formats.md (labels, layout, manifest, run folder, recipes,
  predictions, streams, atomic writes, progress on stderr): one owner per format.
- data/: images, drawing, folds, the image cache, datasets and loaders (numpy, OpenCV, albumentations).
- engine/: torch: models and their heads, losses, the training loop, inference, export, CAM.
- commands/: one module per subcommand; no command module imports another (demo gets the app passed in).
- cli.py (+ cli_options.py): typer declarations only; errors become one line and an exit code.
"""

__version__ = "0.1.0"
