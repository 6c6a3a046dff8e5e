"""The evaluation layer: whether a release is unlearnable.

``victims.py``    train a fresh victim on a release and test it on clean data (:func:`evaluate`,
                  :class:`EvalConfig`, the victim recipes)
``defenses.py``   the defenses a victim may train with, one ``Defense`` record each
``metrics.py``    the paper's mutual-information lens
"""
