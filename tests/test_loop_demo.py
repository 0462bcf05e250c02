"""The loop demo runs end to end on a small day and reports every stage."""

from pipelines import loop_demo


def test_loop_demo_exports_trains_registers_and_shadow_scores(
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
  assert summary["value"] is None  # pipelines.policy_evaluation not merged.
  printed = capsys.readouterr().out
  assert "agreement" in printed and "off-policy value" in printed
