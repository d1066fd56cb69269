"""What the operator and the worker Pod agree on: the environment the operator sets and the exit codes
the worker ends with. Both sides import these names, so they cannot drift apart."""

JOB_NAME_ENV = "PROMPTOPT_JOB_NAME"
JOB_NAMESPACE_ENV = "PROMPTOPT_JOB_NAMESPACE"
ATTEMPT_ENV = "PROMPTOPT_ATTEMPT"
# The fingerprint of the spec the job started with (status.specHash).
SPEC_HASH_ENV = "PROMPTOPT_SPEC_HASH"
TERMINATION_MESSAGE_PATH_ENV = "PROMPTOPT_TERMINATION_MESSAGE_PATH"
# A persistent folder for gepa's checkpoint, so a replaced worker resumes instead of starting over.
CHECKPOINT_DIR_ENV = "PROMPTOPT_CHECKPOINT_DIR"

EXIT_SUCCEEDED = 0  # a usable result (completed, or stopped early with the best so far)
EXIT_FAILED = 1  # may succeed on another attempt
EXIT_INVALID_INPUT = 2  # no attempt can fix it: the spec, prompts or dataset must change
