"""The ACDC paper's result figures and tables from local run folders.

    python -m circuitfind.figures fig3 [--tasks T ...] [--corruption zero|corrupted]   # make fig3
    python -m circuitfind.figures fig4                                                 # make fig4
    python -m circuitfind.figures tables [--tasks T ...]                               # make tables
    python -m circuitfind.figures tracr_suite [--tasks T ...]                          # make tracr-suite

What each figure shows (tasks, methods, ablations, metrics) and the sweep each method runs live in
its figure spec, ``src/circuitfind/figure_specs/<name>.yaml``, in two presets: ``quick`` (the
default, sized for a laptop CPU) and ``paper`` (the paper's sweeps).  A figure is built in three
steps, one module each:

1. ``plan``: one *sweep* per (task, method, ablation, metric) with a folder under ``--runs``
   (default ``outputs/figures/runs``) named by its settings, so figures with the same settings share
   it: fig. 3 on zero ablation and the tables reuse each other's runs;
2. ``sweeps``: run, through the ``circuitfind -m`` command line and a Hydra launcher (``--launcher``:
   joblib with ``--jobs`` parallel jobs, ``slurm`` for a cluster, ``basic`` for one job at a time in a
   child process, ``in_process`` for Hydra's basic launcher inside this process; ``auto``, the
   default, picks joblib for a sweep of several jobs on a machine with more than two cores (on two,
   for several costly jobs such as SP's) and ``in_process`` otherwise, since importing torch and
   TransformerLens costs a child process 5-10 CPU-seconds, more than a tracr run), the parameter
   values that folder does not yet hold as a complete run (``summary.json``): a second invocation
   reuses everything, and a failed job costs only its own point;
3. ``build``: read the run folders (``runs.points``), draw the figure (PNG and PDF) through ``plots``,
   the same layer ``circuitfind-report`` draws with, or write the tables (``tables``: CSV and
   Markdown) into ``--out`` (default ``outputs/figures``), with a ``manifest``: the runs and
   settings behind them.

Tasks whose model weights are neither cached nor downloadable (IOI, Greater-Than and Docstring
offline) are left out with a printed note, unless ``--tasks`` names them, in which case their runs
are attempted and their one-line errors shown.
"""
