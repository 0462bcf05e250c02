"""The parts every pipeline is built from, in sub-packages by concern.

logs/         read serving logs: one record's contract, Arrow blocks, messages
attribution/  join feedback to predictions, per-arm reward accumulators
decisions/    statistics, router state and per-experiment tables
scoring/      model inputs, the shared Keras model handler, prediction rows
io/           output schemas, sinks (BigQuery, files), coders
export/       training data: tf.train.Example encoding, de-identification
checks/       preflight before a run, quality gates and the run summary after
policy/       contextual bandit state, target policies, off-policy estimators

Each sub-package mixes two tiers: a pure core (no Beam import: one record's
parsing, statistics, schemas), and the Beam composites built on it. Imports
run one way: pipelines -> Beam composites -> pure core. `PURE_CORE` names
the core; tests/test_architecture.py holds both rules.
"""

PURE_CORE = (
    "transforms.logs.contract",
    "transforms.logs.cloudevents",
    "transforms.logs.batches",
    "transforms.logs.formats",
    "transforms.attribution.rewards",
    "transforms.attribution.metric_summary",
    "transforms.decisions.stats",
    "transforms.decisions.metrics",
    "transforms.decisions.metric_stats",
    "transforms.decisions.verdicts",
    "transforms.decisions.router_state",
    "transforms.decisions.arm_table",
    "transforms.decisions.outcomes",
    "transforms.decisions.model_quality",
    "transforms.decisions.shadow",
    "transforms.decisions.canary",
    "transforms.scoring.features",
    "transforms.scoring.predictions",
    "transforms.io.schemas",
    "transforms.io.json_lines",
    "transforms.io.arrow_tables",
    "transforms.export.deid",
    "transforms.export.examples",
    "transforms.export.training_set",
    "transforms.checks.gates",
    "transforms.checks.summary",
    "transforms.policy.linear",
    "transforms.policy.estimators",
    "transforms.policy.requests",
    "transforms.policy.targets",
)
