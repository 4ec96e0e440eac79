# Inputs of the service module: s3-ingest on ECS Fargate.

# --- identity and image ------------------------------------------------------

variable "name" {
  description = "Name of the ECS service, task family, log group suffix, IAM roles and alarms."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,48}$", var.name))
    error_message = "name must be 1-48 characters of letters, digits, '-' and '_' (IAM role names add a suffix)."
  }
}

variable "image" {
  description = "Container image with a tag or digest, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/s3-ingest:1.4.2. Rolling out a new version = changing this and applying."
  type        = string

  validation {
    # A moving tag makes a deploy a no-op for Terraform (same task definition)
    # and lets tasks of one service run different code after a restart.
    condition     = can(regex("(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$", var.image)) && !endswith(var.image, ":latest")
    error_message = "image must be pinned to an explicit tag (not :latest) or a @sha256 digest."
  }
}

variable "ecr_repository_arns" {
  description = "ECR repositories the execution role may pull from. null derives the repository from image when it is an ECR image URI; [] for public images (no ECR pull permissions)."
  type        = list(string)
  default     = null
}

variable "binary" {
  description = "Path of the s3-ingest binary in the image (or its name on the image's PATH); used as the entry point and for the health check."
  type        = string
  default     = "s3-ingest"
}

variable "container_user" {
  description = "uid:gid the container runs as. Must not be root. Directories mounted for volumes must be writable by it (see README)."
  type        = string
  default     = "65532:65532"

  validation {
    condition     = can(regex("^[0-9]+(:[0-9]+)?$", var.container_user)) && !can(regex("^0(:|$)", var.container_user))
    error_message = "container_user must be a numeric uid or uid:gid other than root (0)."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the image: X86_64 or ARM64 (Graviton, cheaper)."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "cpu" {
  description = "Task CPU units (1024 = 1 vCPU). Decoding is CPU-bound; worker.concurrency objects are decoded in parallel."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.cpu)
    error_message = "cpu must be a Fargate size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "memory" {
  description = "Task memory in MiB; must be a valid Fargate combination with cpu. Memory per object in flight is about one read buffer plus a few Arrow batches (CSV) or one row group (Parquet)."
  type        = number
  default     = 2048

  validation {
    condition     = var.memory >= 512 && var.memory <= 122880
    error_message = "memory must be between 512 and 122880 MiB."
  }
}

variable "ephemeral_storage_gib" {
  description = "Task ephemeral storage in GiB (21-200), which backs /tmp and volumes without efs. null keeps Fargate's default (20 GiB)."
  type        = number
  default     = null

  validation {
    condition     = var.ephemeral_storage_gib == null || (coalesce(var.ephemeral_storage_gib, 21) >= 21 && coalesce(var.ephemeral_storage_gib, 21) <= 200)
    error_message = "ephemeral_storage_gib must be between 21 and 200."
  }
}

# --- what the worker reads ----------------------------------------------------

variable "queue_url" {
  description = "Ingest queue URL (notification module output queue_url); becomes S3_INGEST__QUEUE__URL."
  type        = string
}

variable "queue_arn" {
  description = "Ingest queue ARN (notification module output queue_arn); scopes the task role and names the metrics."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]+$", var.queue_arn))
    error_message = "queue_arn must be an SQS queue ARN."
  }
}

variable "dlq_url" {
  description = "Dead-letter queue URL (notification module output dlq_url); becomes S3_INGEST__QUEUE__DLQ_URL. The worker sends its reason envelopes there."
  type        = string
}

variable "dlq_arn" {
  description = "Dead-letter queue ARN (notification module output dlq_arn)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:sqs:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]+$", var.dlq_arn))
    error_message = "dlq_arn must be an SQS queue ARN."
  }
}

variable "queue_kms_key_arn" {
  description = "Customer managed key of the queue and DLQ (notification module output kms_key_arn), or null with SQS-managed encryption. The task role gets kms:Decrypt (receive) and kms:GenerateDataKey (send to the DLQ) on it."
  type        = string
  default     = null
}

variable "source_buckets" {
  description = "Buckets (and key prefixes within them) the worker may read: s3:GetObject and s3:GetObjectVersion on arn:aws:s3:::<bucket>/<prefix>*. A prefix \"\" means the whole bucket. Keep these in line with the routes' buckets and key globs."
  type = list(object({
    bucket   = string
    prefixes = optional(list(string), [""])
  }))

  validation {
    condition     = length(var.source_buckets) > 0
    error_message = "source_buckets needs at least one bucket."
  }
}

variable "reconcile" {
  description = "Reconciliation: every interval_secs one task lists a page of each prefix and enqueues objects older than grace_secs that no sink holds (notifications S3 never delivered). state is the s3://BUCKET/KEY object holding its position and lease (the task role may read and write it, conditionally); prefixes are s3://BUCKET/PREFIX locations, each inside source_buckets (which grants the listing). Sets S3_INGEST__RECONCILE__*; null: off."
  type = object({
    state         = string
    prefixes      = list(string)
    interval_secs = optional(number, 60)
    grace_secs    = optional(number, 900)
  })
  default = null

  validation {
    condition     = var.reconcile == null ? true : can(regex("^s3://[^/]+/.*[^/]$", var.reconcile.state))
    error_message = "reconcile.state must name an object: s3://BUCKET/KEY."
  }
  validation {
    condition     = var.reconcile == null ? true : (length(var.reconcile.prefixes) > 0 && alltrue([for p in var.reconcile.prefixes : can(regex("^s3://[^/]+(/.*)?$", p))]))
    error_message = "reconcile.prefixes needs at least one s3://BUCKET/PREFIX."
  }
}

variable "source_kms_key_arns" {
  description = "KMS keys the source objects are encrypted with (SSE-KMS buckets); the task role gets kms:Decrypt on them."
  type        = list(string)
  default     = []
}

variable "s3_parquet_destinations" {
  description = "Buckets and prefixes an s3_parquet sink writes to (prefix as in the sink's config): the task role may put objects (single and multipart) and abort its multipart uploads there, read and list its commit markers (<prefix>/_s3_ingest/commits/), and use kms_key_arn for SSE-KMS."
  type = list(object({
    bucket      = string
    prefix      = optional(string, "")
    kms_key_arn = optional(string)
  }))
  default = []
}

variable "delta_tables" {
  description = "Delta tables a delta sink writes to, s3://bucket/prefix as in the sink's `table`: the task role may read, write and delete objects under the prefix (data files, _delta_log/), abort its multipart uploads, list the prefix, and use kms_key_arn for SSE-KMS."
  type = list(object({
    bucket      = string
    prefix      = string
    kms_key_arn = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for table in var.delta_tables : trim(table.prefix, "/") != ""])
    error_message = "Each delta table needs a prefix: a table at the bucket's root would give the worker every object of the bucket."
  }
}

variable "tasks_iam_role_statements" {
  description = "Extra statements for the task role (what the worker itself may do), for what the module does not know about. Prefer s3_parquet_destinations, delta_tables and secrets where they fit."
  type = list(object({
    sid       = string
    effect    = optional(string, "Allow")
    actions   = list(string)
    resources = list(string)
    conditions = optional(list(object({
      test     = string
      variable = string
      values   = list(string)
    })), [])
  }))
  default = []

  validation {
    condition     = alltrue([for statement in var.tasks_iam_role_statements : can(regex("^[A-Za-z0-9]+$", statement.sid))])
    error_message = "each statement needs an alphanumeric sid."
  }
}

# --- worker configuration ----------------------------------------------------

variable "environment" {
  description = "Extra environment for the worker: routes, sinks and tuning as S3_INGEST__<SECTION>__<KEY> (see the s3-ingest README, \"Environment overrides\"). Routes and sinks are addressed by name, e.g. S3_INGEST__ROUTES__ORDERS__KEY_GLOB = \"incoming/orders/**\" for the route named orders; with more than one route defined here, S3_INGEST__ROUTE_ORDER = \"orders,rest\" gives their match order. The queue URLs, region, wait time and shutdown grace are set by this module and may not appear here."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.environment) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", key))])
    error_message = "environment keys must be valid variable names ([A-Za-z_][A-Za-z0-9_]*)."
  }

  # The worker refuses these at start; here they fail the plan instead of
  # a task that keeps restarting.
  validation {
    condition     = alltrue([for key in keys(var.environment) : !can(regex("^S3_INGEST__ROUTES__[0-9]+__", upper(key)))])
    error_message = "environment addresses routes by name, not by index: S3_INGEST__ROUTES__<NAME>__<KEY> (e.g. S3_INGEST__ROUTES__ORDERS__KEY_GLOB), and S3_INGEST__ROUTE_ORDER for their match order."
  }

  validation {
    condition = length(setintersection(
      [for key in keys(var.environment) : upper(key)],
      ["S3_INGEST__QUEUE__URL", "S3_INGEST__QUEUE__DLQ_URL", "S3_INGEST__QUEUE__WAIT_TIME_SECS", "S3_INGEST__WORKER__SHUTDOWN_GRACE_SECS", "S3_INGEST__AWS__REGION", "S3_INGEST__STATUS__LISTEN_ADDR", "S3_INGEST_LOG_FORMAT", "S3_INGEST_CONFIG", "S3_INGEST_CONFIG_TOML", "S3_INGEST__STATUS__EMF_NAMESPACE", "S3_INGEST__STATUS__EMF_SERVICE", "S3_INGEST__RECONCILE__STATE", "S3_INGEST__RECONCILE__PREFIXES", "S3_INGEST__RECONCILE__INTERVAL_SECS", "S3_INGEST__RECONCILE__GRACE_SECS"],
    )) == 0
    error_message = "environment must not set the queue URLs, wait time, shutdown grace, region, status listen address, log format, config source, metrics namespace or reconciliation: the module derives them (queue_url, dlq_url, stop_timeout, metrics_port, config, config_location, metrics_namespace, reconcile)."
  }
}

variable "secrets" {
  description = "Environment variables the worker reads from Secrets Manager or SSM Parameter Store, as the task definition's secrets (valueFrom): variable name => secret or parameter ARN. A Secrets Manager ARN may carry ECS's :json-key:version-stage:version-id suffix. Point the config at them by name (postgres url_env, http headers_from_env). The values never appear in the task definition or the Terraform state; only the execution role may read them, and only these ARNs."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.secrets) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", key))])
    error_message = "secrets keys must be valid variable names ([A-Za-z_][A-Za-z0-9_]*)."
  }

  validation {
    condition     = alltrue([for arn in values(var.secrets) : can(regex("^arn:[^:]+:secretsmanager:[^:]+:[0-9]{12}:secret:[^:]+(:[^:]*:[^:]*:[^:]*)?$", arn)) || can(regex("^arn:[^:]+:ssm:[^:]+:[0-9]{12}:parameter/.+$", arn))])
    error_message = "secrets values must be Secrets Manager secret ARNs (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME[:json-key:stage:version]) or SSM parameter ARNs (arn:aws:ssm:REGION:ACCOUNT:parameter/NAME)."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer managed KMS keys that encrypt the secrets (and a SecureString config_location parameter): kms:Decrypt for the role that reads them. Secrets under the AWS managed keys need none."
  type        = list(string)
  default     = []
}

variable "config" {
  description = "The worker's whole config file as TOML text, e.g. file(\"s3-ingest.toml\"), passed as S3_INGEST_CONFIG_TOML. Routes and schemas then need no S3_INGEST__ variables (environment still overrides keys). It is stored in the task definition: keep secrets out of it (see secrets). At most one of config and config_location."
  type        = string
  default     = null
}

variable "config_location" {
  description = "Where the worker reads its config file at start instead: s3://BUCKET/KEY or ssm://NAME (ssm:///path/name for a name starting with /). The task role may read exactly that object or parameter. At most one of config and config_location."
  type        = string
  default     = null

  validation {
    condition     = var.config_location == null || can(regex("^(s3://[^/]+/.+|ssm://.+)$", var.config_location))
    error_message = "config_location must be s3://BUCKET/KEY or ssm://NAME."
  }
}

variable "log_level" {
  description = "RUST_LOG for the worker, e.g. info or s3_ingest=debug,info."
  type        = string
  default     = "info"
}

variable "stop_timeout" {
  description = "Seconds ECS waits after SIGTERM before SIGKILL (deploys, scale-in). The worker's shutdown grace is set drain_margin_secs lower, and its long poll no longer than that, so it exits on its own in time."
  type        = number
  default     = 30

  validation {
    condition     = var.stop_timeout >= 10 && var.stop_timeout <= 120
    error_message = "stop_timeout must be between 10 and 120 seconds (Fargate's maximum)."
  }
}

variable "drain_margin_secs" {
  description = "How much earlier than stop_timeout the worker gives up on in-flight work and releases it (ChangeMessageVisibility 0) and exits."
  type        = number
  default     = 5

  validation {
    condition     = var.drain_margin_secs >= 2 && var.drain_margin_secs <= 30
    error_message = "drain_margin_secs must be between 2 and 30."
  }
}

variable "metrics_port" {
  description = "Port of the worker's status endpoints (/healthz, metrics): sets S3_INGEST__STATUS__LISTEN_ADDR to 0.0.0.0:<port> and is mapped in the task definition. `s3-ingest healthcheck` calls /healthz from inside the container, so the health check needs no ingress rule; open one in your own security group only for a scraper."
  type        = number
  default     = 9090

  validation {
    condition     = var.metrics_port >= 1 && var.metrics_port <= 65535 && floor(var.metrics_port) == var.metrics_port
    error_message = "metrics_port must be a TCP port number."
  }
}

variable "health_check" {
  description = "Container health check timing. The check runs `<binary> healthcheck` inside the container (the image has no curl)."
  type = object({
    interval     = optional(number, 30)
    timeout      = optional(number, 5)
    retries      = optional(number, 3)
    start_period = optional(number, 30)
  })
  default = {}
}

variable "volumes" {
  description = "Writable volumes, e.g. for the parquet_dir sink's path (the root filesystem is read-only; /tmp is always mounted). Without efs the volume is task ephemeral storage: it disappears with the task, so use efs (with an access point that enforces container_user's uid) for a sink that must persist."
  type = list(object({
    name           = string
    container_path = string
    read_only      = optional(bool, false)
    efs = optional(object({
      file_system_arn  = string
      access_point_arn = optional(string)
      root_directory   = optional(string)
    }))
  }))
  default = [{ name = "data", container_path = "/data" }]

  validation {
    condition     = alltrue([for v in var.volumes : startswith(v.container_path, "/") && v.container_path != "/" && v.container_path != "/tmp" && v.name != "tmp"])
    error_message = "volume container_path must be an absolute path other than / and /tmp, and the name \"tmp\" is reserved (the module mounts /tmp itself)."
  }
}

# --- scaling -----------------------------------------------------------------

variable "autoscaling_min_capacity" {
  description = "Fewest running tasks. 0 scales to zero: the service stops its last task once no message is visible or in flight (after scale_in_cooldown), and an alarm starts one again when a message waits (a minute or two before the first file lands)."
  type        = number
  default     = 1

  validation {
    condition     = var.autoscaling_min_capacity >= 0
    error_message = "autoscaling_min_capacity must be at least 0."
  }
}

variable "autoscaling_max_capacity" {
  description = "Most running tasks."
  type        = number
  default     = 10
}

variable "target_backlog_per_task" {
  description = "Target tracking value: visible messages (objects waiting) per running task. Roughly (acceptable latency in seconds) x (objects one task finishes per second)."
  type        = number
  default     = 20

  validation {
    condition     = var.target_backlog_per_task > 0
    error_message = "target_backlog_per_task must be positive."
  }
}

variable "scale_out_cooldown" {
  description = "Seconds after a scale-out before another scale-out."
  type        = number
  default     = 60
}

variable "scale_in_cooldown" {
  description = "Seconds after a scale-in before another scale-in (longer, so a bursty backlog does not make tasks flap)."
  type        = number
  default     = 300
}

# --- cluster and network -----------------------------------------------------

variable "cluster_name" {
  description = "Existing ECS cluster to run in; it must have Container Insights enabled (the scaling metric needs RunningTaskCount). null creates a cluster named after the service with Container Insights on."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Subnets for the tasks (private subnets with a NAT gateway or VPC endpoints for S3, SQS, ECR, CloudWatch Logs and KMS)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids needs at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups for the tasks. [] creates an egress-only group (HTTPS to egress_cidr_blocks, plus NFS when a volume uses EFS) in vpc_id."
  type        = list(string)
  default     = []
}

variable "vpc_id" {
  description = "VPC of the subnets; required only when security_group_ids is empty."
  type        = string
  default     = null
}

variable "egress_cidr_blocks" {
  description = "Where the created security group lets tasks connect (HTTPS to AWS APIs, NFS to EFS). Narrow it to the VPC CIDR when all AWS APIs are reached through VPC endpoints."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "egress_rules" {
  description = "More egress from the created security group, for sinks outside AWS APIs: a postgres server (5432), ClickHouse (8123/8443), an HTTP endpoint. Each rule gives a port (or from_port..to_port) and cidr_blocks and/or security_group_ids."
  type = list(object({
    description        = string
    from_port          = number
    to_port            = optional(number)
    protocol           = optional(string, "tcp")
    cidr_blocks        = optional(list(string), [])
    security_group_ids = optional(list(string), [])
  }))
  default = []

  validation {
    condition     = alltrue([for rule in var.egress_rules : length(rule.cidr_blocks) + length(rule.security_group_ids) > 0])
    error_message = "each egress rule needs cidr_blocks or security_group_ids."
  }
}

variable "assign_public_ip" {
  description = "Give tasks a public IP (only for public subnets without NAT; not recommended)."
  type        = bool
  default     = false
}

# --- logs and alarms ---------------------------------------------------------

variable "log_retention_days" {
  description = "CloudWatch Logs retention of the worker's JSON logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "log_kms_key_arn" {
  description = "Customer managed key for the log group (its key policy must allow logs.<region>.amazonaws.com). null uses CloudWatch Logs' default encryption."
  type        = string
  default     = null
}

variable "alarm_topic_arn" {
  description = "SNS topic for alarm and OK notifications; null creates the alarms without actions."
  type        = string
  default     = null
}

variable "oldest_message_age_alarm_seconds" {
  description = "Alarm when the oldest message on the ingest queue is older than this: the workers are not keeping up or are stuck."
  type        = number
  default     = 900
}

variable "alarm_evaluation_periods" {
  description = "Consecutive one-minute periods above the threshold before the age alarm fires."
  type        = number
  default     = 5
}

variable "metrics_namespace" {
  description = "CloudWatch namespace of the worker's key metrics, written as embedded metric format lines on stderr (shipped by awslogs; no agent, no sidecar) with the dimension Service = name. null writes none, and the metric alarms below are not created."
  type        = string
  default     = "s3-ingest"
}

variable "dead_letter_alarm_threshold" {
  description = "Objects dead-lettered within 5 minutes above which the dead-letter-rate alarm fires (the DLQ-not-empty alarm fires on the first one)."
  type        = number
  default     = 10
}

variable "retry_alarm_threshold" {
  description = "Objects retried within 5 minutes above which the retry-rate alarms fire: one for the whole service, one per name in retry_alarm_sinks."
  type        = number
  default     = 50
}

variable "retry_alarm_sinks" {
  description = "Sink names (as in the config) that get their own retry-rate alarm, so a failing warehouse is told apart from a failing lake."
  type        = list(string)
  default     = []
}

variable "wait_for_steady_state" {
  description = "Make `terraform apply` wait until a deployment has finished (new tasks healthy, old tasks drained)."
  type        = bool
  default     = false
}

variable "enable_execute_command" {
  description = "ECS Exec into running tasks (aws ecs execute-command), for debugging: the task role gets the ssmmessages channels, and the agent gets writable volumes so the root filesystem stays read-only. The image has /bin/sh but no other tools."
  type        = bool
  default     = false
}

variable "capacity_provider_strategy" {
  description = "Capacity providers instead of the FARGATE launch type, e.g. mostly Fargate Spot with a base on Fargate: [{ capacity_provider = \"FARGATE\", base = 1, weight = 1 }, { capacity_provider = \"FARGATE_SPOT\", weight = 3 }]. A Spot task gets SIGTERM two minutes before it is stopped; the worker hands back what it cannot finish within stop_timeout. The cluster must have these providers."
  type = list(object({
    capacity_provider = string
    weight            = optional(number, 1)
    base              = optional(number, 0)
  }))
  default = []
}

variable "tags" {
  description = "Tags for every resource that takes tags (propagated to tasks)."
  type        = map(string)
  default     = {}
}
