"""dap: diffusion-based unsupervised surface anomaly detection, taught and reproduced.

The spine is DiffusionAD (norm-guided one-step denoising diffusion); DDAD, GLAD and DiffAD
run on the same data, synthesis and metrics. Start with ``notebooks/01_forward_process``.

The layers, each importing only from the layers below it (``tests/test_layering.py`` holds
this)::

    cli                      every command of `python -m dap`
     |
    experiments  zoo         train / evaluate / demo / ablation / benchmark runs; shipped models
     |            |
    engine  report           checkpoint, train, select, evaluate; tables and figures;
    copy_metrics             DiffAD's copy PSNR
     |
    methods  runtime         base (the contract) + one package per method; speed options:
     |                       diffusionad, ddad, glad, diffad, draem (config, ops, model)
     |
    diffusion  models  features  synthesis  losses      the paper's machinery
     |
    data  metrics            datasets and downloads; metrics from maps and masks
     |
    config  profiles  io  progress  viz                 strict configs, the profile table,
                                                        atomic writes, progress bars, plots

``analysis`` holds the notebooks' helpers: it may use everything below
``experiments``. Data flows one way: data -> synthesis -> method -> map and score -> metrics
-> tables. A method never reads files; a metric never knows which method made a map.
"""

__version__ = "0.1.0"
