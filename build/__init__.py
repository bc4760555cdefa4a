"""Build tools, each a module run from the repository root: `python -m build.engine` (`make engine`),
`python -m build.tiny_checkpoint` (`make checkpoint`). Run from the root, this package shadows PyPI's `build`
(pypa), which the project does not use."""
