#!/bin/sh
# Create the VisionOps buckets and one least-privilege MinIO user per client. Idempotent.
# Runs in the minio/mc image (POSIX sh); every value comes from the Job's environment.
set -eu

echo "waiting for MinIO at ${S3_ENDPOINT}"
until mc alias set visionops "${S3_ENDPOINT}" "${MINIO_ROOT_USER}" "${MINIO_ROOT_PASSWORD}" >/dev/null 2>&1; do
  sleep 3
done

for bucket in ${BUCKETS}; do
  echo "bucket ${bucket}: ensuring it exists"
  mc mb --ignore-existing "visionops/${bucket}"
done

# ensure_user USER SECRET POLICY: create or update USER and attach POLICY (from POLICY_DIR).
ensure_user() {
  echo "user ${1}: policy ${3}"
  mc admin policy create visionops "${3}" "${POLICY_DIR}/${3}.json"
  mc admin user add visionops "${1}" "${2}"
  if ! out=$(mc admin policy attach visionops "${3}" --user "${1}" 2>&1); then
    case "${out}" in
      *already*) echo "user ${1}: policy ${3} already attached" ;;
      *) echo "${out}" >&2; exit 1 ;;
    esac
  fi
}

ensure_user "${MLFLOW_SERVER_ACCESS_KEY}" "${MLFLOW_SERVER_SECRET_KEY}" mlflow-server
ensure_user "${SERVING_ACCESS_KEY}" "${SERVING_SECRET_KEY}" serving
ensure_user "${PIPELINE_ACCESS_KEY}" "${PIPELINE_SECRET_KEY}" pipeline
echo "buckets and users are ready"
