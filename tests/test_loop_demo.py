"""The loop demo runs end to end on a small day and reports every stage."""

from pipelines import loop_demo


def test_loop_demo_exports_trains_registers_shadow_scores_and_evaluates(
    tmp_path, capsys, monkeypatch):
  # The demo sets both in its process; restored after the test.
  monkeypatch.setenv(loop_demo.KEY_ENV, "loop-demo-test-key")
  monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
  summary = loop_demo.main(["--workdir", str(tmp_path), "--requests", "3000",
                            "--epochs", "2"])
  quality = summary["quality"]
  assert quality["exported:train"] + quality["exported:eval"] == 3000
  assert quality["deid:EMAIL"] > 0 and quality["deid:CARD"] > 0
  card = summary["card"]
  assert card["registry"]["model"] == "models:/ranker@candidate"
  [shadow] = summary["shadow"]
  assert (shadow["model"], shadow["baseline"], shadow["rows"]) == (
      "candidate", "live", 3000)
  assert 0.0 <= shadow["agreement_rate"] <= 1.0
  value = summary["value"]
  dr = value["dr"]
  # The afternoon's requests only, every one usable (none dead-lettered).
  assert 1000 < dr["n"] < 2000
  assert 0.0 <= dr["ci_low"] <= dr["value"] <= dr["ci_high"] <= 1.0
  # The simulator's arms do not change clicks: the state learned in the
  # morning earns what any policy earns, and an honest estimate on other
  # requests covers that (an in-sample one would be biased upwards).
  assert dr["ci_low"] <= value["true_value"] <= dr["ci_high"]
  assert abs(dr["logged_value"] - value["true_value"]) < 0.05
  printed = capsys.readouterr().out
  assert "agreement" in printed and "off-policy value" in printed
  assert f"DR {dr['value']:.4f} [{dr['ci_low']:.4f}" in printed
