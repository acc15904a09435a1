"""`python -m router` is the same as the `dicom-router` console script."""

from router.cli import main

raise SystemExit(main())
