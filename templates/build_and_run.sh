#!/usr/bin/env bash
# Build the Flex Templates and run them on Dataflow.
#
#   export PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \
#       REPOSITORY=online-eval   # an Artifact Registry Docker repository
#   templates/build_and_run.sh build
#       one image per pipeline (Cloud Build, no local Docker needed), pushed to
#       $REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/online-eval-<name>:$TAG,
#       and gs://$BUCKET/templates/<name>.json built from it and from
#       templates/<name>/metadata.json
#   templates/build_and_run.sh run reward_batch \
#       --parameters feedback='gs://my-bucket/logs/feedback/dt=2026-01-01/*' \
#       --parameters output_dataset=my-project:online_eval
#       launches a job; extra arguments go to `gcloud dataflow flex-template
#       run` (--parameters, --max-workers, ...). To update a running streaming
#       job, give its name: JOB_NAME=reward-streaming ... run reward_streaming
#       --update --parameters ...
#
# TAG (default: the current commit) must be the same for build and run: the
# job's workers use the image the template was built from.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
: "${REPOSITORY:?set REPOSITORY (Artifact Registry Docker repository)}"
TAG="${TAG:-$(git rev-parse --short HEAD)}"

image() {
  echo "$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY/online-eval-${1//_/-}:$TAG"
}

template_names() {
  for metadata in templates/*/metadata.json; do
    basename "$(dirname "$metadata")"
  done
}

build() {
  local config
  config="$(mktemp --suffix=.yaml)"
  trap 'rm -f "$config"' RETURN
  {
    echo "steps:"
    for name in $(template_names); do
      echo "- name: gcr.io/cloud-builders/docker"
      echo "  env: [DOCKER_BUILDKIT=1]"
      echo "  args: [build, -f, templates/Dockerfile, --build-arg," \
           "PIPELINE=$name, -t, '$(image "$name")', .]"
    done
    echo "images:"
    for name in $(template_names); do
      echo "- '$(image "$name")'"
    done
  } > "$config"
  gcloud builds submit . --config "$config" --project "$PROJECT" \
      --region "$REGION"
  for name in $(template_names); do
    gcloud dataflow flex-template build "gs://$BUCKET/templates/$name.json" \
        --image "$(image "$name")" --sdk-language PYTHON \
        --metadata-file "templates/$name/metadata.json" --project "$PROJECT"
  done
}

run() {
  local name="$1"
  shift
  gcloud dataflow flex-template run \
      "${JOB_NAME:-${name//_/-}-$(date -u +%Y%m%d-%H%M%S)}" \
      --template-file-gcs-location "gs://$BUCKET/templates/$name.json" \
      --project "$PROJECT" --region "$REGION" \
      --temp-location "gs://$BUCKET/tmp" \
      --staging-location "gs://$BUCKET/staging" \
      --parameters "sdk_container_image=$(image "$name")" "$@"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) sed -n '2,/^[^#]/s/^# \{0,1\}//p' templates/build_and_run.sh; exit 2 ;;
esac
