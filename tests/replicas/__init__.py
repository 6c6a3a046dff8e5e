"""Small replicas of public poisoning codebases' loops, written for this project from reading
them (not their code): what ``miue.compat`` is tested and benchmarked on (docs/compat.md).

``ue_toolbox``       Unlearnable-Examples' ``toolbox.PerturbationTool`` (APBench's em_utils/rem_utils copy it)
``ue_samplewise``    its sample-wise EM loop (perturbation.py), a script: ``python ue_samplewise.py --out F``
``tap_forge``        APBench TAP's normalised-space PGD forging (forgemaster_base.py ``_pgd_step``)
``cp_losses``        Contrastive Poisoning's losses.py (``SimCLRLoss``: the 2020 SupConLoss)
``supcon_losses``    SupContrast's losses.py as of December 2023 (``SupConLoss`` with the zero-positive guard)
``cp_main``          Contrastive Poisoning's sample-wise poisoning loop (main.py, model.py)

Each loop runs tiny CPU workloads on generated data (no downloads) and is deterministic for a seed.
"""
