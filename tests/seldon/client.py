"""Seldon's own client and serialisation, run in .venv-seldon (Python 3.12,
seldon-core 1.19) by the Seldon tests. Prints one JSON document.

  client.py bodies CASES_JSON
      feedback bodies as SeldonClient writes them (protobuf JSON), and what
      Seldon's parser reads back from each (reward, routing).
  client.py round-trip ENDPOINT UNIT PLAN_JSON
      routes requests at a router microservice and sends each one's feedback
      with SeldonClient, as a client behind Seldon's executor does: the
      prediction's puid and, with SELDON_ENABLE_ROUTING_INJECTION, the
      routing {UNIT: branch} echoed in the feedback's response.meta; every
      `unrouted_every`-th feedback without routing. Then the router's metrics.
  client.py route ENDPOINT N
      N routes, then the router's metrics.
"""

import json
import random
import sys
import uuid

import numpy as np
from seldon_core.proto import prediction_pb2
from seldon_core.seldon_client import SeldonClient
from seldon_core.utils import feedback_to_json, json_to_feedback


def bodies(cases):
  out = []
  for case in cases:
    response = prediction_pb2.SeldonMessage()
    response.meta.puid = case["puid"]
    for unit, branch in (case.get("routing") or {}).items():
      response.meta.routing[unit] = branch
    request = prediction_pb2.SeldonMessage()
    request.data.ndarray.extend([[1.0, 2.0]])
    feedback = prediction_pb2.Feedback(request=request, response=response,
                                       reward=case["reward"])
    body = feedback_to_json(feedback)
    parsed = json_to_feedback(body)
    out.append({"body": body, "seldon_reward": parsed.reward,
                "seldon_routing": dict(parsed.response.meta.routing)})
  return out


def client(endpoint):
  return SeldonClient(microservice_endpoint=endpoint, transport="rest")


def route(sc, value):
  result = sc.microservice(method="route", data=np.array([[value]]),
                           payload_type="ndarray")
  if not result.success:
    raise RuntimeError(f"route failed: {result.msg}")
  branch = int(result.response.data.ndarray[0][0])
  metrics = [{"key": m.key, "value": m.value, "tags": dict(m.tags)}
             for m in result.response.meta.metrics]
  return result.request, branch, metrics


def round_trip(endpoint, unit, plan):
  sc = client(endpoint)
  rng = random.Random(plan["seed"])
  sent = []
  for i in range(plan["requests"]):
    request, branch, _ = route(sc, float(i))
    # What the executor returns: the puid (in the Seldon-Puid header, which
    # the client copies) and, with routing injection, meta.routing.
    response = prediction_pb2.SeldonMessage()
    response.meta.puid = str(uuid.uuid4())
    routed = (i + 1) % plan["unrouted_every"] != 0
    if routed:
      response.meta.routing[unit] = branch
    if "rates" in plan:
      reward = 1.0 if rng.random() < plan["rates"][branch] else 0.0
    else:
      reward = round(rng.gauss(plan["means"][branch], 1.0), 3)
    result = sc.microservice_feedback(prediction_request=request,
                                      prediction_response=response,
                                      reward=reward)
    if not result.success:
      raise RuntimeError(f"feedback failed: {result.msg}")
    sent.append({"body": feedback_to_json(result.request), "branch": branch,
                 "routed": routed, "reward": reward})
  _, _, metrics = route(sc, 0.0)
  return {"sent": sent, "metrics": metrics}


def routes(endpoint, n):
  sc = client(endpoint)
  branches = [route(sc, float(i))[1] for i in range(n)]
  _, _, metrics = route(sc, 0.0)
  return {"branches": branches, "metrics": metrics}


def main(argv):
  command = argv[0]
  if command == "bodies":
    result = bodies(json.loads(argv[1]))
  elif command == "round-trip":
    result = round_trip(argv[1], argv[2], json.loads(argv[3]))
  else:
    result = routes(argv[1], int(argv[2]))
  json.dump(result, sys.stdout)


if __name__ == "__main__":
  main(sys.argv[1:])
