"""The lab: training loop, datasets, experiments, plots and the `swat-fx` CLI, built on the public API.

It needs the `lab` extra (`pip install "swat-fx[lab]"`); `import swat_fx` never loads it."""
