"""Off-policy support, as the promotion gate checks it, and the gate's other defaults.

Off-policy estimates of a candidate are only as good as the logging policy's coverage of
the candidate's actions. A logged action whose logging propensity is below
``SUPPORT_THRESHOLD`` counts as unsupported, and a candidate that puts more than
``MAX_UNSUPPORTED`` of its probability mass on unsupported actions is not promoted
(``validation.gate``). With ``TOLERANCE`` and ``MIN_ESS`` (the candidate's DR lower bound
may fall short of production's estimate by this fraction of it; its effective sample
size must reach this) these are the defaults of ``validation.gate.GateRule``, of the run
spec and of the retrain settings, all derived from here; this module imports nothing, so
the settings read it at DAG parse time. The floors that keep the logs supported are
:mod:`bandit_core.policies.overlap`.
"""

SUPPORT_THRESHOLD = 0.01
#: In a round that offers many actions the threshold scales down: an action is
#: unsupported there when logged below this share of the uniform propensity 1 / K (K the
#: actions the logging policy could play), so uniform logging over more than
#: ``UNIFORM_SHARE / SUPPORT_THRESHOLD`` candidates still counts as full support.
UNIFORM_SHARE = 0.5
MAX_UNSUPPORTED = 0.2
TOLERANCE = 0.0
MIN_ESS = 50.0
#: The estimator whose numbers the gate decides on (and the reports headline).
ESTIMATOR = "dr"
