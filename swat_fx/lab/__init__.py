"""The lab: training loop, datasets, experiments, plots and the `swat-fx` CLI, built on the public API.

It needs the `lab` extra; `import swat_fx` never loads it.
"""

import importlib.util

_MISSING = [name for name in ("tqdm", "sklearn", "networkx") if importlib.util.find_spec(name) is None]
if _MISSING:
    raise ImportError(
        f"swat_fx.lab (the swat-fx command, training loop and experiments) needs {', '.join(_MISSING)}: "
        "install the lab extra, pip install -c constraints.txt -e '.[lab]' (from a checkout) or 'swat-fx[lab]'"
    )
