"""Every output table, defined once: BigQuery schemas, partitioning, clustering.

The BigQuery sink, the local emulator set-up, the JSONL sink and the docs all
derive from `TABLES`. Pure Python, no Beam.
"""

from __future__ import annotations

import dataclasses
import datetime

def format_timestamp(epoch_seconds: float | None) -> str | None:
  """Epoch seconds -> the TIMESTAMP text both BigQuery and JSON readers take."""
  if epoch_seconds is None:
    return None
  moment = datetime.datetime.fromtimestamp(epoch_seconds, datetime.timezone.utc)
  return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Every table carries these: the run that wrote the row, when, and the day
# partition the run owns (re-running a day replaces that partition).
RUN_FIELDS = (
    ("run_id", "STRING", "REQUIRED"),
    ("computed_at", "TIMESTAMP", "REQUIRED"),
    ("partition_date", "DATE", "REQUIRED"),
)

ARM_STATS_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("arm", "STRING", "REQUIRED"),
    ("window_start", "TIMESTAMP", "NULLABLE"),
    ("window_end", "TIMESTAMP", "NULLABLE"),
    ("impressions", "INT64", "REQUIRED"),
    ("feedback_count", "INT64", "REQUIRED"),
    ("samples", "INT64", "REQUIRED"),
    ("reward_sum", "FLOAT64", "REQUIRED"),
    ("reward_sq_sum", "FLOAT64", "REQUIRED"),
    ("reward_mean", "FLOAT64", "NULLABLE"),
    ("reward_type", "STRING", "NULLABLE"),
    ("ci_low", "FLOAT64", "NULLABLE"),
    ("ci_high", "FLOAT64", "NULLABLE"),
    ("posterior_alpha", "FLOAT64", "NULLABLE"),
    ("posterior_beta", "FLOAT64", "NULLABLE"),
    ("prob_best", "FLOAT64", "NULLABLE"),
    ("expected_loss", "FLOAT64", "NULLABLE"),
    ("control_arm", "STRING", "NULLABLE"),
    ("lift", "FLOAT64", "NULLABLE"),
    ("lift_ci_low", "FLOAT64", "NULLABLE"),
    ("lift_ci_high", "FLOAT64", "NULLABLE"),
    ("p_value", "FLOAT64", "NULLABLE"),
    ("p_value_adj", "FLOAT64", "NULLABLE"),
    ("seq_p_value", "FLOAT64", "NULLABLE"),
    ("seq_ci_low", "FLOAT64", "NULLABLE"),
    ("seq_ci_high", "FLOAT64", "NULLABLE"),
    ("srm_p_value", "FLOAT64", "NULLABLE"),
    ("srm_alert", "BOOL", "NULLABLE"),
) + RUN_FIELDS

DEAD_LETTER_FIELDS = (
    ("record_type", "STRING", "REQUIRED"),
    ("source_file", "STRING", "NULLABLE"),
    ("reason", "STRING", "REQUIRED"),
    ("detail", "STRING", "NULLABLE"),
    ("raw", "STRING", "NULLABLE"),
) + RUN_FIELDS

DATA_QUALITY_FIELDS = (
    ("record_type", "STRING", "REQUIRED"),
    ("metric", "STRING", "REQUIRED"),
    ("count", "INT64", "REQUIRED"),
) + RUN_FIELDS

ROUTER_ARM_FIELDS = (
    ("arm", "STRING", "REQUIRED"),
    ("tries", "INT64", "REQUIRED"),
    ("successes", "FLOAT64", "REQUIRED"),
    ("value", "FLOAT64", "NULLABLE"),
    ("alpha", "FLOAT64", "NULLABLE"),
    ("beta", "FLOAT64", "NULLABLE"),
    ("prob_best", "FLOAT64", "NULLABLE"),
    ("traffic_share", "FLOAT64", "NULLABLE"),
    # With tries and successes, the variance of a continuous reward.
    ("reward_sq_sum", "FLOAT64", "NULLABLE"),
)

# A contextual router's state (transforms/policy/linear.py, docs/policy.md):
# per arm theta and the Cholesky factor of A + lambda I (row-major, d x d).
CONTEXTUAL_ARM_FIELDS = (
    ("arm", "STRING", "REQUIRED"),
    ("n", "FLOAT64", "REQUIRED"),
    ("count", "INT64", "REQUIRED"),
    ("theta", "FLOAT64", "REPEATED"),
    ("cholesky", "FLOAT64", "REPEATED"),
)

CONTEXTUAL_FIELDS = (
    ("policy", "STRING", "REQUIRED"),
    ("alpha", "FLOAT64", "REQUIRED"),
    ("ridge_lambda", "FLOAT64", "REQUIRED"),
    ("decay", "FLOAT64", "REQUIRED"),
    ("epsilon", "FLOAT64", "REQUIRED"),
    ("context_source", "STRING", "REQUIRED"),
    ("context_features", "STRING", "REPEATED"),
    ("dim", "INT64", "NULLABLE"),
    ("arms", CONTEXTUAL_ARM_FIELDS, "REPEATED"),
)

ROUTER_STATE_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("reward_type", "STRING", "NULLABLE"),
    ("best_arm", "STRING", "NULLABLE"),
    ("window_start", "TIMESTAMP", "NULLABLE"),
    ("window_end", "TIMESTAMP", "NULLABLE"),
    ("arms", ROUTER_ARM_FIELDS, "REPEATED"),
    ("contextual", CONTEXTUAL_FIELDS, "NULLABLE"),
) + RUN_FIELDS


@dataclasses.dataclass(frozen=True)
class Table:
  """One output table: its fields and how BigQuery lays it out."""
  name: str
  fields: tuple
  description: str
  partition_field: str = "partition_date"
  clustering: tuple = ()
  file_suffix: str = ".jsonl"  # of DIR/<name>-SSSSS-of-NNNNN<suffix>

  @property
  def columns(self) -> tuple:
    return tuple(name for name, _, _ in self.fields)

  def beam_schema(self) -> dict:
    """The schema as `beam.io.WriteToBigQuery` takes it."""
    return {"fields": [_beam_field(f) for f in self.fields]}

  def additional_bq_parameters(self) -> dict:
    params = {"timePartitioning": {"type": "DAY", "field": self.partition_field}}
    if self.clustering:
      params["clustering"] = {"fields": list(self.clustering)}
    return params


def _beam_field(field) -> dict:
  name, kind, mode = field
  if isinstance(kind, tuple):
    return {"name": name, "type": "RECORD", "mode": mode,
            "fields": [_beam_field(f) for f in kind]}
  return {"name": name, "type": kind, "mode": mode}


ARM_STATS = Table("arm_stats", ARM_STATS_FIELDS,
                  "Per-arm rewards and decision statistics of each experiment.",
                  clustering=("experiment_id",))
DEAD_LETTER = Table("dead_letter", DEAD_LETTER_FIELDS,
                    "Records that could not be used, with the raw record and why.",
                    clustering=("record_type", "reason"))
DATA_QUALITY = Table("data_quality", DATA_QUALITY_FIELDS,
                     "Record counts per outcome: read, counted, late, duplicate...",
                     clustering=("record_type",))
ROUTER_STATE = Table("router_state", ROUTER_STATE_FIELDS,
                     "Bandit router state per experiment, to continue from.",
                     clustering=("experiment_id",),
                     # What a router loads: DIR/router_state*.json.
                     file_suffix=".json")

TABLES = {t.name: t for t in (ARM_STATS, DEAD_LETTER, DATA_QUALITY, ROUTER_STATE)}

# Batch inference (pipelines/batch_inference.py).

PREDICTIONS_FIELDS = (
    ("request_id", "STRING", "REQUIRED"),
    ("model", "STRING", "REQUIRED"),  # In ensemble mode e.g. "mean(a,b)".
    ("prediction", "FLOAT64", "NULLABLE"),  # The output of a one-output model.
    ("scores", "FLOAT64", "REPEATED"),  # The outputs of a multi-output model.
    ("predicted_class", "INT64", "NULLABLE"),  # Classifiers only.
    # Shadow mode, rows of the models other than the baseline:
    ("baseline_prediction", "FLOAT64", "NULLABLE"),
    ("abs_diff", "FLOAT64", "NULLABLE"),  # Mean over the outputs.
    ("agrees", "BOOL", "NULLABLE"),  # Same predicted class.
    ("scored_at", "TIMESTAMP", "REQUIRED"),
) + RUN_FIELDS

SHADOW_SUMMARY_FIELDS = (
    ("model", "STRING", "REQUIRED"),
    ("baseline", "STRING", "REQUIRED"),
    ("rows", "INT64", "REQUIRED"),
    ("mean_diff", "FLOAT64", "NULLABLE"),
    ("mean_abs_diff", "FLOAT64", "NULLABLE"),
    ("max_abs_diff", "FLOAT64", "NULLABLE"),
    ("agreement_rate", "FLOAT64", "NULLABLE"),
) + RUN_FIELDS

PREDICTIONS = Table("predictions", PREDICTIONS_FIELDS,
                    "Model outputs per request: scores, ensembles, shadow "
                    "comparisons.", clustering=("model",))
SHADOW_SUMMARY = Table("shadow_summary", SHADOW_SUMMARY_FIELDS,
                       "Per shadow model: how far it is from the baseline.")

INFERENCE_TABLES = {t.name: t for t in (PREDICTIONS, SHADOW_SUMMARY,
                                        DEAD_LETTER, DATA_QUALITY)}

# Training export (pipelines/training_export.py).

EXPORT_SUMMARY_FIELDS = (
    ("split", "STRING", "REQUIRED"),  # train or eval
    ("experiment_id", "STRING", "REQUIRED"),
    ("arm", "STRING", "REQUIRED"),
    ("rows", "INT64", "REQUIRED"),
    ("reward_sum", "FLOAT64", "REQUIRED"),
    ("reward_mean", "FLOAT64", "NULLABLE"),
    ("positive_rows", "INT64", "REQUIRED"),  # reward > 0: the label balance
) + RUN_FIELDS

EXPORT_SUMMARY = Table("export_summary", EXPORT_SUMMARY_FIELDS,
                       "Rows exported per split and arm, and their label "
                       "balance.", clustering=("split",))

EXPORT_TABLES = {t.name: t for t in (EXPORT_SUMMARY, DEAD_LETTER,
                                     DATA_QUALITY)}

# One row per batch run: the quality gates' verdicts and what they were taken
# from (transforms/checks/). A scheduler publishes a run's results only if its
# status is not "failed".

GATE_FIELDS = (
    ("gate", "STRING", "REQUIRED"),
    ("subject", "STRING", "REQUIRED"),  # A record type, an output, an experiment.
    ("passed", "BOOL", "REQUIRED"),
    ("detail", "STRING", "NULLABLE"),
)

RUN_EXPERIMENT_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("arms", "STRING", "NULLABLE"),  # Comma-separated, sorted.
    ("control_arm", "STRING", "NULLABLE"),  # The control the run used.
    ("impressions", "INT64", "NULLABLE"),
    ("feedback_count", "INT64", "NULLABLE"),
    ("expected_allocation", "STRING", "NULLABLE"),  # arm=weight,...; null: equal.
)

RUN_SUMMARY_FIELDS = (
    ("pipeline", "STRING", "REQUIRED"),
    ("status", "STRING", "REQUIRED"),  # passed, failed or accepted.
    ("allow_partial", "BOOL", "NULLABLE"),
    ("gates", GATE_FIELDS, "REPEATED"),
    ("counts", (("record_type", "STRING", "REQUIRED"),
                ("metric", "STRING", "REQUIRED"),
                ("count", "INT64", "REQUIRED")), "REPEATED"),
    ("experiments", RUN_EXPERIMENT_FIELDS, "REPEATED"),
    ("tables", "STRING", "REPEATED"),  # Where the run's tables went.
) + RUN_FIELDS

RUN_SUMMARY = Table("run_summary", RUN_SUMMARY_FIELDS,
                    "Per run: quality gates' verdicts, counts, experiments "
                    "found, tables written.", clustering=("pipeline",))


# Metrics, segments and verdicts (reward_batch --metrics; docs/metrics.md).

METRIC_STATS_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("dimension", "STRING", "REQUIRED"),  # "all", or an attribute name
    ("segment", "STRING", "REQUIRED"),  # "all", a value, or "other"
    ("arm", "STRING", "REQUIRED"),
    ("metric", "STRING", "REQUIRED"),
    ("metric_type", "STRING", "REQUIRED"),
    ("role", "STRING", "REQUIRED"),
    ("direction", "STRING", "REQUIRED"),
    ("margin", "FLOAT64", "NULLABLE"),
    ("quantile", "FLOAT64", "NULLABLE"),
    ("window_start", "TIMESTAMP", "NULLABLE"),
    ("window_end", "TIMESTAMP", "NULLABLE"),
    ("requests", "INT64", "REQUIRED"),
    ("n", "INT64", "REQUIRED"),
    ("value_sum", "FLOAT64", "REQUIRED"),
    ("value_m2", "FLOAT64", "REQUIRED"),
    ("value_min", "FLOAT64", "NULLABLE"),
    ("value_max", "FLOAT64", "NULLABLE"),
    ("den_sum", "FLOAT64", "NULLABLE"),
    ("den_m2", "FLOAT64", "NULLABLE"),
    ("comoment", "FLOAT64", "NULLABLE"),
    ("rank_error", "FLOAT64", "NULLABLE"),
    ("estimate", "FLOAT64", "NULLABLE"),
    ("ci_low", "FLOAT64", "NULLABLE"),
    ("ci_high", "FLOAT64", "NULLABLE"),
    ("control_arm", "STRING", "NULLABLE"),
    ("lift", "FLOAT64", "NULLABLE"),
    ("lift_ci_low", "FLOAT64", "NULLABLE"),
    ("lift_ci_high", "FLOAT64", "NULLABLE"),
    ("p_value", "FLOAT64", "NULLABLE"),
    ("p_value_adj", "FLOAT64", "NULLABLE"),
    ("seq_p_value", "FLOAT64", "NULLABLE"),
    ("seq_p_value_adj", "FLOAT64", "NULLABLE"),
    ("seq_ci_low", "FLOAT64", "NULLABLE"),
    ("seq_ci_high", "FLOAT64", "NULLABLE"),
    ("ni_p_value", "FLOAT64", "NULLABLE"),
    ("srm_p_value", "FLOAT64", "NULLABLE"),
    ("srm_alert", "BOOL", "NULLABLE"),
) + RUN_FIELDS

DECISIONS_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("dimension", "STRING", "REQUIRED"),
    ("segment", "STRING", "REQUIRED"),
    ("arm", "STRING", "REQUIRED"),
    ("control_arm", "STRING", "REQUIRED"),
    ("verdict", "STRING", "REQUIRED"),  # ship, rollback, invalid, keep_running
    ("decide_on", "STRING", "REQUIRED"),  # fixed or sequential
    ("reasons", "STRING", "REPEATED"),  # one sentence per metric
    ("srm_p_value", "FLOAT64", "NULLABLE"),
    ("window_start", "TIMESTAMP", "NULLABLE"),
    ("window_end", "TIMESTAMP", "NULLABLE"),
) + RUN_FIELDS

METRIC_STATS = Table("metric_stats", METRIC_STATS_FIELDS,
                     "Per experiment, segment, arm and metric: totals, "
                     "estimate, lift, p-values.",
                     clustering=("experiment_id", "metric"))
DECISIONS = Table("decisions", DECISIONS_FIELDS,
                  "Per experiment, segment and candidate arm: the verdict and "
                  "its reasons.", clustering=("experiment_id", "verdict"))

METRIC_TABLES = {t.name: t for t in (METRIC_STATS, DECISIONS)}


# Off-policy evaluation (pipelines/policy_evaluation.py, docs/policy.md).

POLICY_VALUE_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("policy", "STRING", "REQUIRED"),  # The target policy's name.
    ("estimator", "STRING", "REQUIRED"),  # ips, snips, dm, dr, sndr
    ("value", "FLOAT64", "NULLABLE"),
    ("ci_low", "FLOAT64", "NULLABLE"),  # Normal approximation, 95 %.
    ("ci_high", "FLOAT64", "NULLABLE"),
    ("boot_ci_low", "FLOAT64", "NULLABLE"),  # Poisson bootstrap, 95 %.
    ("boot_ci_high", "FLOAT64", "NULLABLE"),
    ("n", "INT64", "REQUIRED"),
    ("ess", "FLOAT64", "NULLABLE"),  # (sum w)^2 / sum w^2
    ("max_weight", "FLOAT64", "NULLABLE"),
    ("unsupported_share", "FLOAT64", "NULLABLE"),
    ("logged_value", "FLOAT64", "NULLABLE"),  # The logging policy's mean reward.
) + RUN_FIELDS

POLICY_VALUE = Table("policy_value", POLICY_VALUE_FIELDS,
                     "Estimated value of target policies from logged "
                     "propensities (off-policy evaluation).",
                     clustering=("experiment_id", "policy"))

POLICY_TABLES = {t.name: t for t in (POLICY_VALUE, DEAD_LETTER,
                                     DATA_QUALITY)}


# Model evaluation (pipelines/model_evaluation.py).

CALIBRATION_BIN_FIELDS = (
    ("bin_low", "FLOAT64", "REQUIRED"),
    ("bin_high", "FLOAT64", "REQUIRED"),
    ("count", "INT64", "REQUIRED"),
    ("mean_predicted", "FLOAT64", "REQUIRED"),
    ("observed_rate", "FLOAT64", "REQUIRED"),
)


def _with_interval(*names: str) -> tuple:
  return tuple((f"{name}{suffix}", "FLOAT64", "NULLABLE")
               for name in names for suffix in ("", "_ci_low", "_ci_high"))


MODEL_QUALITY_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("arm", "STRING", "REQUIRED"),
    ("shadow", "BOOL", "REQUIRED"),
    ("task", "STRING", "REQUIRED"),
    ("requests", "INT64", "REQUIRED"),
    ("with_truth", "INT64", "REQUIRED"),
    ("scored", "INT64", "REQUIRED"),  # with a truth the prediction can score
) + _with_interval("accuracy", "log_loss", "brier", "auc") + (
    ("auc_max_error", "FLOAT64", "NULLABLE"),  # |exact AUC - auc| at most
    ("calibration", CALIBRATION_BIN_FIELDS, "REPEATED"),
) + _with_interval("mae", "rmse", "mean_error") + RUN_FIELDS

SHADOW_COMPARISON_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("live_arm", "STRING", "REQUIRED"),
    ("shadow_arm", "STRING", "REQUIRED"),
    ("task", "STRING", "REQUIRED"),
    ("pairs", "INT64", "REQUIRED"),  # requests both answered
    ("agreement_rate", "FLOAT64", "NULLABLE"),
    ("mean_diff", "FLOAT64", "NULLABLE"),  # shadow - live
    ("mean_abs_diff", "FLOAT64", "NULLABLE"),
    ("pairs_with_truth", "INT64", "REQUIRED"),
    ("live_accuracy", "FLOAT64", "NULLABLE"),
    ("shadow_accuracy", "FLOAT64", "NULLABLE"),
) + _with_interval("accuracy_diff") + (
    ("live_only_correct", "INT64", "REQUIRED"),
    ("shadow_only_correct", "INT64", "REQUIRED"),
    ("mcnemar_p_value", "FLOAT64", "NULLABLE"),
    ("loss", "STRING", "REQUIRED"),  # log_loss or squared_error
    ("live_loss", "FLOAT64", "NULLABLE"),
    ("shadow_loss", "FLOAT64", "NULLABLE"),
) + _with_interval("loss_diff") + (
    ("paired_t_p_value", "FLOAT64", "NULLABLE"),
    ("verdict", "STRING", "REQUIRED"),  # worse, better, no difference, ...
    ("summary", "STRING", "REQUIRED"),
) + RUN_FIELDS

CANARY_METRIC_FIELDS = (
    ("metric", "STRING", "REQUIRED"),
    ("kind", "STRING", "REQUIRED"),
    ("direction", "STRING", "REQUIRED"),
    ("weight", "FLOAT64", "REQUIRED"),
    ("critical", "BOOL", "REQUIRED"),
    ("classification", "STRING", "REQUIRED"),  # Pass, High, Low, NoData
    ("passed", "BOOL", "NULLABLE"),
    ("canary_value", "FLOAT64", "NULLABLE"),
    ("baseline_value", "FLOAT64", "NULLABLE"),
    ("effect", "FLOAT64", "NULLABLE"),
    ("p_value", "FLOAT64", "NULLABLE"),
    ("u_max_error", "FLOAT64", "NULLABLE"),
)

CANARY_VERDICTS_FIELDS = (
    ("experiment_id", "STRING", "REQUIRED"),
    ("canary_arm", "STRING", "REQUIRED"),
    ("baseline_arm", "STRING", "REQUIRED"),
    ("score", "FLOAT64", "NULLABLE"),
    ("verdict", "STRING", "REQUIRED"),  # Pass, Marginal, Fail, NoData
    ("reason", "STRING", "REQUIRED"),
    ("metrics", CANARY_METRIC_FIELDS, "REPEATED"),
) + RUN_FIELDS

MODEL_QUALITY = Table("model_quality", MODEL_QUALITY_FIELDS,
                      "Model quality per arm (live and shadow) on the "
                      "requests with ground truth.",
                      clustering=("experiment_id",))
SHADOW_COMPARISON = Table("shadow_comparison", SHADOW_COMPARISON_FIELDS,
                          "Each shadow model against the live one on the "
                          "same requests.", clustering=("experiment_id",))
CANARY_VERDICTS = Table("canary_verdicts", CANARY_VERDICTS_FIELDS,
                        "Canary judged against its baseline: per-metric "
                        "classes, score, verdict.",
                        clustering=("experiment_id",))

MODEL_EVALUATION_TABLES = {t.name: t for t in (
    MODEL_QUALITY, SHADOW_COMPARISON, CANARY_VERDICTS, DEAD_LETTER,
    DATA_QUALITY)}
