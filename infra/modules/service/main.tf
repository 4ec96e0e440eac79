# s3-ingest as an ECS Fargate service:
#   task definition (read-only root, non-root, JSON logs, own health check,
#   stopTimeout matched to the worker's drain) -> service (rolling deploys with
#   circuit breaker) -> target tracking on SQS backlog per running task ->
#   alarms on the DLQ and on the age of the oldest message.

locals {
  # arn:<partition>:sqs:<region>:<account>:<name>: the queue says where we are,
  # so the module needs no data sources for region or account.
  queue_arn_parts = split(":", var.queue_arn)
  partition       = local.queue_arn_parts[1]
  region          = local.queue_arn_parts[3]
  account_id      = local.queue_arn_parts[4]
  queue_name      = local.queue_arn_parts[5]
  dlq_name        = split(":", var.dlq_arn)[5]

  create_cluster = var.cluster_name == null
  cluster_name   = local.create_cluster ? aws_ecs_cluster.this[0].name : data.aws_ecs_cluster.given[0].cluster_name
  cluster_arn    = local.create_cluster ? aws_ecs_cluster.this[0].arn : data.aws_ecs_cluster.given[0].arn

  create_security_group = length(var.security_group_ids) == 0
  security_group_ids    = local.create_security_group ? [aws_security_group.this[0].id] : var.security_group_ids

  container_name = "s3-ingest"

  # Drain: on SIGTERM the worker stops receiving, gives in-flight objects
  # shutdown_grace_secs, releases the rest (visibility 0) and exits within
  # about max(shutdown_grace_secs, wait_time_secs). Both must end before ECS's
  # stopTimeout sends SIGKILL, with a margin for the release calls; a message
  # still held at SIGKILL is not lost, but stays hidden for a whole
  # visibility timeout before another task gets it.
  shutdown_grace_secs = var.stop_timeout - var.drain_margin_secs
  wait_time_secs      = min(20, local.shutdown_grace_secs)

  # 123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/s3-ingest:1.2.3
  #   -> arn:aws:ecr:eu-west-1:123456789012:repository/team/s3-ingest
  ecr_image_parts = try(regex("^([0-9]{12})\\.dkr\\.ecr(?:-fips)?\\.([a-z0-9-]+)\\.amazonaws\\.com(?:\\.cn)?/([^:@]+)", var.image), null)
  ecr_repository_arns = var.ecr_repository_arns != null ? var.ecr_repository_arns : (
    local.ecr_image_parts == null ? [] :
    ["arn:${local.partition}:ecr:${local.ecr_image_parts[1]}:${local.ecr_image_parts[0]}:repository/${local.ecr_image_parts[2]}"]
  )

  source_object_arns = distinct(flatten([
    for source in var.source_buckets : [
      for prefix in source.prefixes : "arn:${local.partition}:s3:::${source.bucket}/${prefix}*"
    ]
  ]))

  # s3:ListBucket on each source bucket, limited to the same prefixes
  # (a bucket with the prefix "" may be listed whole).
  source_bucket_listing = {
    for source in var.source_buckets : source.bucket => distinct(source.prefixes)...
  }
  source_list_grants = {
    for bucket, prefix_lists in local.source_bucket_listing : bucket => distinct(flatten(prefix_lists))
  }

  efs_volumes = [for volume in var.volumes : volume if volume.efs != null]

  # secrets: what the execution role may read. ECS's valueFrom may name a
  # JSON key, stage or version after a Secrets Manager ARN; the grant is on
  # the secret itself (its first seven ARN fields).
  secret_arns = distinct([
    for arn in values(var.secrets) : join(":", slice(split(":", arn), 0, 7))
    if split(":", arn)[2] == "secretsmanager"
  ])
  parameter_arns = distinct([for arn in values(var.secrets) : arn if split(":", arn)[2] == "ssm"])

  # ECS Exec (the SSM agent ECS injects) needs these writable; with them
  # the root filesystem stays read-only.
  exec_volumes = var.enable_execute_command ? {
    exec-managed-agents = "/managed-agents"
    exec-ssm-state      = "/var/lib/amazon/ssm"
    exec-ssm-logs       = "/var/log/amazon/ssm"
  } : {}

  destination_kms_key_arns = distinct(compact(concat(
    [for destination in var.s3_parquet_destinations : destination.kms_key_arn],
    [for table in var.delta_tables : table.kms_key_arn],
  )))

  # delta tables: s3://bucket/prefix as in the sink's `table`, the prefix
  # with one trailing slash (the table's files and _delta_log/ are under it).
  delta_table_prefixes = {
    for table in var.delta_tables : table.bucket => "${trim(table.prefix, "/")}/"...
  }

  # s3_parquet commit markers: <prefix>/_s3_ingest/commits/<name>.json (the
  # sink trims slashes off its prefix the same way).
  destination_marker_prefixes = {
    for destination in var.s3_parquet_destinations : destination.bucket => (
      trim(destination.prefix, "/") == "" ? "_s3_ingest/commits/" : "${trim(destination.prefix, "/")}/_s3_ingest/commits/"
    )...
  }

  # config_location: what the task role may read at start.
  config_s3_object_arn = (var.config_location != null && startswith(coalesce(var.config_location, "-"), "s3://")
    ? "arn:${local.partition}:s3:::${trimprefix(var.config_location, "s3://")}"
  : null)
  config_ssm_name = (var.config_location != null && startswith(coalesce(var.config_location, "-"), "ssm://")
    ? trimprefix(var.config_location, "ssm://")
  : null)
  config_parameter_arn = (local.config_ssm_name == null ? null
    : startswith(local.config_ssm_name, "arn:") ? local.config_ssm_name
    : "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter/${trimprefix(local.config_ssm_name, "/")}"
  )
  config_environment = merge(
    var.config != null ? { S3_INGEST_CONFIG_TOML = var.config } : {},
    var.config_location != null ? { S3_INGEST_CONFIG = var.config_location } : {},
  )

  # reconcile: the section as environment overrides, the state object the
  # task role reads and writes, and each prefix matched to a source grant.
  reconcile_environment = var.reconcile == null ? {} : {
    S3_INGEST__RECONCILE__STATE         = var.reconcile.state
    S3_INGEST__RECONCILE__PREFIXES      = jsonencode(var.reconcile.prefixes)
    S3_INGEST__RECONCILE__INTERVAL_SECS = tostring(var.reconcile.interval_secs)
    S3_INGEST__RECONCILE__GRACE_SECS    = tostring(var.reconcile.grace_secs)
  }
  reconcile_state_arn = var.reconcile == null ? null : "arn:${local.partition}:s3:::${trimprefix(var.reconcile.state, "s3://")}"
  # s3://bucket/prefix -> is it inside some source_buckets entry?
  reconcile_prefixes_granted = var.reconcile == null ? true : alltrue([
    for location in var.reconcile.prefixes : anytrue([
      for source in var.source_buckets : anytrue([
        for prefix in source.prefixes : startswith(trimprefix(location, "s3://"), "${source.bucket}/${prefix}") || trimprefix(location, "s3://") == source.bucket && prefix == ""
      ])
    ])
  ])

  emf_environment = var.metrics_namespace == null ? {} : {
    S3_INGEST__STATUS__EMF_NAMESPACE = var.metrics_namespace
    S3_INGEST__STATUS__EMF_SERVICE   = var.name
  }

  environment = merge(var.environment, local.config_environment, local.emf_environment, local.reconcile_environment, {
    S3_INGEST__QUEUE__URL                  = var.queue_url
    S3_INGEST__QUEUE__DLQ_URL              = var.dlq_url
    S3_INGEST__QUEUE__WAIT_TIME_SECS       = tostring(local.wait_time_secs)
    S3_INGEST__WORKER__SHUTDOWN_GRACE_SECS = tostring(local.shutdown_grace_secs)
    S3_INGEST__AWS__REGION                 = local.region
    # The status endpoints (/healthz for the health check, metrics) on the
    # port the task definition maps.
    S3_INGEST__STATUS__LISTEN_ADDR = "0.0.0.0:${var.metrics_port}"
    RUST_LOG                       = var.log_level
  })

  container = {
    name      = local.container_name
    image     = var.image
    essential = true

    entryPoint = [var.binary]
    # JSON lines: one CloudWatch Logs event per log record, queryable by field
    # in Logs Insights (error_kind, key, route, ...).
    command = ["--log-format", "json", "run"]

    user                   = var.container_user
    readonlyRootFilesystem = true
    privileged             = false
    # SIGTERM, then SIGKILL after this many seconds; see shutdown_grace_secs.
    stopTimeout = var.stop_timeout

    environment = [for name in sort(keys(local.environment)) : { name = name, value = local.environment[name] }]
    # Injected by ECS at start from Secrets Manager / SSM (execution role).
    secrets = [for name in sort(keys(var.secrets)) : { name = name, valueFrom = var.secrets[name] }]

    portMappings = [{ name = "metrics", containerPort = var.metrics_port, protocol = "tcp" }]

    mountPoints = concat(
      [{ sourceVolume = "tmp", containerPath = "/tmp", readOnly = false }],
      [for volume in var.volumes : { sourceVolume = volume.name, containerPath = volume.container_path, readOnly = volume.read_only }],
      [for name, path in local.exec_volumes : { sourceVolume = name, containerPath = path, readOnly = false }],
    )

    # The binary checks its own /healthz on the metrics port: no curl or
    # shell in the image. The command inherits the container's environment,
    # so it sees the same configuration as the worker.
    healthCheck = {
      command     = ["CMD", var.binary, "healthcheck"]
      interval    = var.health_check.interval
      timeout     = var.health_check.timeout
      retries     = var.health_check.retries
      startPeriod = var.health_check.start_period
    }

    linuxParameters = {
      # A tiny init as PID 1 forwards SIGTERM to the worker and reaps children.
      initProcessEnabled = true
      capabilities       = { drop = ["ALL"] }
    }

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.this.name
        awslogs-region        = local.region
        awslogs-stream-prefix = local.container_name
        # A CloudWatch Logs hiccup must not block the worker's stderr writes
        # (and with them message processing); the buffer absorbs bursts.
        mode            = "non-blocking"
        max-buffer-size = "25m"
      }
    }
  }
}

# ---------------------------------------------------------------------------
# Cluster
# ---------------------------------------------------------------------------

resource "aws_ecs_cluster" "this" {
  count = local.create_cluster ? 1 : 0

  name = var.name

  # Publishes ECS/ContainerInsights RunningTaskCount, the divisor of the
  # scaling metric below.
  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  tags = var.tags
}

data "aws_ecs_cluster" "given" {
  count = local.create_cluster ? 0 : 1

  cluster_name = var.cluster_name

  lifecycle {
    postcondition {
      condition = anytrue([
        for setting in self.setting : setting.name == "containerInsights" && contains(["enabled", "enhanced"], setting.value)
      ])
      error_message = "ECS cluster ${var.cluster_name} does not have Container Insights enabled; the backlog-per-task scaling metric divides by ECS/ContainerInsights RunningTaskCount and would never have data."
    }
  }
}

# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "this" {
  #checkov:skip=CKV_AWS_158:Log groups are encrypted at rest by CloudWatch Logs by default; a customer key is one variable away (log_kms_key_arn).
  #checkov:skip=CKV_AWS_338:Retention is the operator's choice (log_retention_days, default 30 days); these are operational logs, the data itself lands in the sink.
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

# ---------------------------------------------------------------------------
# IAM
# ---------------------------------------------------------------------------

data "aws_iam_policy_document" "execution_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# The task role: what the worker itself may do.
data "aws_iam_policy_document" "task_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    # Only ECS tasks of this account (confused-deputy protection, as the ECS
    # docs recommend for task roles).
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# The execution role: what ECS does to start the task (pull the image, create
# the log stream). Instead of AmazonECSTaskExecutionRolePolicy, which allows
# pulling from every repository and writing to every log group.
data "aws_iam_policy_document" "execution" {
  dynamic "statement" {
    for_each = length(local.ecr_repository_arns) > 0 ? [1] : []
    content {
      sid = "EcrLogin"
      # GetAuthorizationToken has no resource-level permissions.
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = length(local.ecr_repository_arns) > 0 ? [1] : []
    content {
      sid       = "PullImage"
      actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
      resources = local.ecr_repository_arns
    }
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.this.arn}:*"]
  }

  # The task definition's secrets, and nothing else.
  dynamic "statement" {
    for_each = length(local.secret_arns) > 0 ? [1] : []
    content {
      sid       = "ReadSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(local.parameter_arns) > 0 ? [1] : []
    content {
      sid       = "ReadSecretParameters"
      actions   = ["ssm:GetParameters"]
      resources = local.parameter_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secrets) > 0 && length(var.secrets_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
    }
  }
}

data "aws_iam_policy_document" "task" {
  # HeadObject and GetObject (ranged too) pinned to the notification's
  # version: GetObjectVersion for versioned buckets.
  statement {
    sid       = "ReadSourceObjects"
    actions   = ["s3:GetObject", "s3:GetObjectVersion"]
    resources = local.source_object_arns
  }

  # ListBucket on the same prefixes: without it S3 answers 403 for a key
  # that does not exist, so a deleted object would look like a permission
  # problem. With it, a deleted object is 404 (object_missing), and a 403
  # means the role really may not read (a deployment problem the worker
  # waits out) or the object is unreadable on its own (its KMS key).
  dynamic "statement" {
    for_each = local.source_list_grants
    content {
      sid       = "ListSource${replace(title(replace(statement.key, "/[^A-Za-z0-9]+/", " ")), " ", "")}"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.key}"]
      dynamic "condition" {
        for_each = contains(statement.value, "") ? [] : [1]
        content {
          test     = "StringLike"
          variable = "s3:prefix"
          values   = [for prefix in statement.value : "${prefix}*"]
        }
      }
    }
  }

  # SendMessage on the queue itself: a message handed back (shutdown,
  # receive-ahead, a deployment problem) is re-sent as a copy carrying its
  # attempt count, then the original is deleted, so handing back does not
  # count towards max_receive_count. Without it the worker falls back to
  # releasing (visibility 0), and those receives count.
  statement {
    sid = "ConsumeIngestQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:SendMessage",
    ]
    resources = [var.queue_arn]
  }

  # SendMessage for the reason envelopes; GetQueueAttributes because the
  # worker checks at start-up that the DLQ is reachable and exits 1 if not.
  statement {
    sid       = "DeadLetter"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes"]
    resources = [var.dlq_arn]
  }

  # Receiving from a KMS-encrypted queue needs Decrypt; sending to the DLQ
  # (same key) needs GenerateDataKey.
  dynamic "statement" {
    for_each = var.queue_kms_key_arn != null ? [1] : []
    content {
      sid       = "QueueEncryption"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [var.queue_kms_key_arn]
    }
  }

  dynamic "statement" {
    for_each = length(var.source_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "SourceObjectEncryption"
      actions   = ["kms:Decrypt"]
      resources = var.source_kms_key_arns
    }
  }

  # ECS Exec: the session channels have no resource-level permissions.
  dynamic "statement" {
    for_each = var.enable_execute_command ? [1] : []
    content {
      sid = "EcsExec"
      actions = [
        "ssmmessages:CreateControlChannel",
        "ssmmessages:CreateDataChannel",
        "ssmmessages:OpenControlChannel",
        "ssmmessages:OpenDataChannel",
      ]
      resources = ["*"]
    }
  }

  # config_location: the worker reads its config file at start.
  dynamic "statement" {
    for_each = local.config_s3_object_arn != null ? [1] : []
    content {
      sid       = "ReadConfigObject"
      actions   = ["s3:GetObject"]
      resources = [local.config_s3_object_arn]
    }
  }

  dynamic "statement" {
    for_each = local.config_parameter_arn != null ? [1] : []
    content {
      sid       = "ReadConfigParameter"
      actions   = ["ssm:GetParameter"]
      resources = [local.config_parameter_arn]
    }
  }

  dynamic "statement" {
    for_each = local.config_parameter_arn != null && length(var.secrets_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "DecryptConfigParameter"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
    }
  }

  # s3_parquet sinks: PutObject covers CreateMultipartUpload, UploadPart
  # and CompleteMultipartUpload; an upload given up is aborted.
  # Reconciliation's state object: read, and written conditionally
  # (If-Match / If-None-Match) to hold the fleet's one lease.
  dynamic "statement" {
    for_each = local.reconcile_state_arn == null ? [] : [1]
    content {
      sid       = "ReconcileState"
      actions   = ["s3:GetObject", "s3:PutObject"]
      resources = [local.reconcile_state_arn]
    }
  }

  # Without ListBucket, S3 answers 403 instead of 404 for the state object
  # before its first write, and reconciliation could never start.
  dynamic "statement" {
    for_each = local.reconcile_state_arn == null ? [] : [1]
    content {
      sid       = "ReconcileStateLookup"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${split("/", trimprefix(var.reconcile.state, "s3://"))[0]}"]
      condition {
        test     = "StringEquals"
        variable = "s3:prefix"
        values   = [join("/", slice(split("/", trimprefix(var.reconcile.state, "s3://")), 1, length(split("/", trimprefix(var.reconcile.state, "s3://")))))]
      }
    }
  }

  dynamic "statement" {
    for_each = length(var.s3_parquet_destinations) > 0 ? [1] : []
    content {
      sid     = "WriteS3ParquetSinks"
      actions = ["s3:PutObject", "s3:AbortMultipartUpload"]
      resources = distinct([
        for destination in var.s3_parquet_destinations : "arn:${local.partition}:s3:::${destination.bucket}/${destination.prefix}*"
      ])
    }
  }

  # The worker asks whether a version is already committed with a
  # HeadObject of its commit marker (s3:GetObject). PutObject above writes
  # the marker.
  dynamic "statement" {
    for_each = length(var.s3_parquet_destinations) > 0 ? [1] : []
    content {
      sid     = "ReadS3ParquetCommitMarkers"
      actions = ["s3:GetObject"]
      resources = distinct(flatten([
        for bucket, prefixes in local.destination_marker_prefixes : [
          for prefix in prefixes : "arn:${local.partition}:s3:::${bucket}/${prefix}*"
        ]
      ]))
    }
  }

  # ListBucket limited to the marker prefixes: without it S3 answers 403
  # for a marker that does not exist (a version not committed yet), which
  # would read as a missing grant; with it the answer is 404.
  dynamic "statement" {
    for_each = local.destination_marker_prefixes
    content {
      sid       = "ListS3ParquetCommits${replace(title(replace(statement.key, "/[^A-Za-z0-9]+/", " ")), " ", "")}"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.key}"]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = [for prefix in distinct(statement.value) : "${prefix}*"]
      }
    }
  }

  # delta sinks read the table's log and files, write data files (single
  # and multipart) and log versions (conditional PUTs), and delete expired
  # log files after a checkpoint.
  dynamic "statement" {
    for_each = length(var.delta_tables) > 0 ? [1] : []
    content {
      sid     = "ReadWriteDeltaTables"
      actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      resources = distinct(flatten([
        for bucket, prefixes in local.delta_table_prefixes : [
          for prefix in prefixes : "arn:${local.partition}:s3:::${bucket}/${prefix}*"
        ]
      ]))
    }
  }

  # Listing _delta_log/ finds the latest version; limited to the tables.
  dynamic "statement" {
    for_each = local.delta_table_prefixes
    content {
      sid       = "ListDeltaTables${replace(title(replace(statement.key, "/[^A-Za-z0-9]+/", " ")), " ", "")}"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.key}"]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = [for prefix in distinct(statement.value) : "${prefix}*"]
      }
    }
  }

  # SSE-KMS on the destination: a data key per object, and Decrypt to
  # complete a multipart upload (and to read a delta table's log).
  dynamic "statement" {
    for_each = length(local.destination_kms_key_arns) > 0 ? [1] : []
    content {
      sid       = "S3ParquetSinkEncryption"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = local.destination_kms_key_arns
    }
  }

  dynamic "statement" {
    for_each = var.tasks_iam_role_statements
    content {
      sid       = statement.value.sid
      effect    = statement.value.effect
      actions   = statement.value.actions
      resources = statement.value.resources
      dynamic "condition" {
        for_each = statement.value.conditions
        content {
          test     = condition.value.test
          variable = condition.value.variable
          values   = condition.value.values
        }
      }
    }
  }

  # EFS volumes mounted with IAM authorization (always on, see volume below).
  dynamic "statement" {
    for_each = local.efs_volumes
    content {
      sid       = "MountEfs${replace(title(replace(statement.value.name, "/[^A-Za-z0-9]+/", " ")), " ", "")}"
      actions   = statement.value.read_only ? ["elasticfilesystem:ClientMount"] : ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
      resources = [statement.value.efs.file_system_arn]
      dynamic "condition" {
        for_each = statement.value.efs.access_point_arn != null ? [1] : []
        content {
          test     = "StringEquals"
          variable = "elasticfilesystem:AccessPointArn"
          values   = [statement.value.efs.access_point_arn]
        }
      }
    }
  }
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  description        = "ECS execution role of ${var.name}: pull the image, write the log stream"
  assume_role_policy = data.aws_iam_policy_document.execution_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-image-and-write-logs"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  description        = "ECS task role of ${var.name}: read the source objects, consume the queue, dead-letter"
  assume_role_policy = data.aws_iam_policy_document.task_assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "task" {
  name   = "ingest"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

resource "aws_security_group" "this" {
  count = local.create_security_group ? 1 : 0

  name_prefix = "${var.name}-"
  description = "s3-ingest ${var.name} tasks: no ingress, egress to AWS APIs (HTTPS) and EFS (NFS) only"
  vpc_id      = var.vpc_id

  # The worker only makes outbound calls; the health check runs inside the
  # container, so there is no ingress rule at all.
  egress {
    description = "HTTPS to AWS APIs (S3, SQS, ECR, CloudWatch Logs, KMS) or their VPC endpoints"
    from_port   = 443
    to_port     = 443
    protocol    = "tcp"
    cidr_blocks = var.egress_cidr_blocks
  }

  dynamic "egress" {
    for_each = length(local.efs_volumes) > 0 ? [1] : []
    content {
      description = "NFS to EFS mount targets"
      from_port   = 2049
      to_port     = 2049
      protocol    = "tcp"
      cidr_blocks = var.egress_cidr_blocks
    }
  }

  # Sinks outside AWS APIs (egress_rules).
  dynamic "egress" {
    for_each = var.egress_rules
    content {
      description     = egress.value.description
      from_port       = egress.value.from_port
      to_port         = coalesce(egress.value.to_port, egress.value.from_port)
      protocol        = egress.value.protocol
      cidr_blocks     = egress.value.cidr_blocks
      security_groups = egress.value.security_group_ids
    }
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
    precondition {
      condition     = var.vpc_id != null
      error_message = "vpc_id is required when security_group_ids is empty (the module then creates the security group)."
    }
  }
}

# ---------------------------------------------------------------------------
# Task definition and service
# ---------------------------------------------------------------------------

resource "aws_ecs_task_definition" "this" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.cpu)
  memory                   = tostring(var.memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn

  container_definitions = jsonencode([local.container])

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  # The root filesystem is read-only; /tmp is the one scratch place anything
  # in the process (or a library) may write to. Task ephemeral storage.
  volume {
    name = "tmp"
  }

  # ECS Exec's agent writes where a read-only root does not let it.
  dynamic "volume" {
    for_each = local.exec_volumes
    content {
      name = volume.key
    }
  }

  dynamic "volume" {
    for_each = var.volumes
    content {
      name = volume.value.name

      dynamic "efs_volume_configuration" {
        for_each = volume.value.efs != null ? [volume.value.efs] : []
        content {
          file_system_id = split("/", efs_volume_configuration.value.file_system_arn)[1]
          # With an access point its own root directory applies.
          root_directory     = efs_volume_configuration.value.access_point_arn == null ? efs_volume_configuration.value.root_directory : null
          transit_encryption = "ENABLED"
          authorization_config {
            access_point_id = efs_volume_configuration.value.access_point_arn == null ? null : split("/", efs_volume_configuration.value.access_point_arn)[1]
            iam             = "ENABLED"
          }
        }
      }
    }
  }

  dynamic "ephemeral_storage" {
    for_each = var.ephemeral_storage_gib != null ? [var.ephemeral_storage_gib] : []
    content {
      size_in_gib = ephemeral_storage.value
    }
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = var.autoscaling_max_capacity >= var.autoscaling_min_capacity
      error_message = "autoscaling_max_capacity must be at least autoscaling_min_capacity."
    }
    precondition {
      condition     = var.config == null || var.config_location == null
      error_message = "Give the worker's config one way: config (the TOML text) or config_location (s3:// or ssm://), not both."
    }
    precondition {
      condition     = length(setintersection([for key in keys(var.secrets) : upper(key)], [for key in keys(local.environment) : upper(key)])) == 0
      error_message = "A variable is set both in secrets and in environment (or by the module); name it once."
    }
    precondition {
      condition     = local.reconcile_prefixes_granted
      error_message = "Every reconcile.prefixes location must lie inside a source_buckets entry (bucket and one of its prefixes): that grant is what lets the worker list and read it."
    }
  }
}

resource "aws_ecs_service" "this" {
  name            = var.name
  cluster         = local.cluster_arn
  task_definition = aws_ecs_task_definition.this.arn
  desired_count   = var.autoscaling_min_capacity
  # The FARGATE launch type, or the capacity providers given (Fargate Spot).
  launch_type      = length(var.capacity_provider_strategy) == 0 ? "FARGATE" : null
  platform_version = "LATEST"

  dynamic "capacity_provider_strategy" {
    for_each = var.capacity_provider_strategy
    content {
      capacity_provider = capacity_provider_strategy.value.capacity_provider
      weight            = capacity_provider_strategy.value.weight
      base              = capacity_provider_strategy.value.base
    }
  }

  # Rolling deploy: new tasks start (up to 200 %) before old ones get
  # SIGTERM, so throughput does not dip while the old ones drain; a
  # deployment whose tasks keep failing their health check is rolled back.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = local.security_group_ids
    assign_public_ip = var.assign_public_ip
  }

  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"
  enable_execute_command  = var.enable_execute_command
  wait_for_steady_state   = var.wait_for_steady_state
  tags                    = var.tags

  lifecycle {
    # Autoscaling owns the task count after creation; without this every
    # apply would reset it to autoscaling_min_capacity.
    ignore_changes = [desired_count]
  }

  depends_on = [aws_iam_role_policy.task, aws_iam_role_policy.execution]
}

# ---------------------------------------------------------------------------
# Autoscaling on backlog per task
# ---------------------------------------------------------------------------

resource "aws_appautoscaling_target" "this" {
  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${local.cluster_name}/${aws_ecs_service.this.name}"
  min_capacity       = var.autoscaling_min_capacity
  max_capacity       = var.autoscaling_max_capacity
  tags               = var.tags
}

locals {
  scale_to_zero = var.autoscaling_min_capacity == 0
  # With autoscaling_min_capacity >= 1 the divisor stays above zero. With
  # scale to zero, the metric is 0 only when nothing is visible *and*
  # nothing in flight (target tracking then scales in to zero), and a
  # little above the backlog per task otherwise, so that target tracking
  # never takes the last task away from work in progress.
  backlog_per_task_expression = (local.scale_to_zero
    ? "IF(visible + in_flight > 0, IF(FILL(tasks, 0) > 0, visible / tasks, visible) + 0.01, 0)"
  : "visible / tasks")
}

# Visible messages / running tasks, held at target_backlog_per_task: the
# AWS-recommended way to scale SQS consumers. CPU does not work here: an
# idle worker long-polling and a worker stuck behind a slow sink both use
# little CPU, and the backlog is what users wait on.
resource "aws_appautoscaling_policy" "backlog_per_task" {
  name               = "${var.name}-backlog-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_backlog_per_task
    scale_out_cooldown = var.scale_out_cooldown
    scale_in_cooldown  = var.scale_in_cooldown

    customized_metric_specification {
      metrics {
        id          = "visible"
        label       = "Messages visible on ${local.queue_name}"
        return_data = false
        metric_stat {
          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"
            dimensions {
              name  = "QueueName"
              value = local.queue_name
            }
          }
          stat = "Average"
        }
      }

      metrics {
        id          = "tasks"
        label       = "Running tasks of ${var.name}"
        return_data = false
        metric_stat {
          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "RunningTaskCount"
            dimensions {
              name  = "ClusterName"
              value = local.cluster_name
            }
            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.this.name
            }
          }
          stat = "Average"
        }
      }

      # Messages received and being worked on (or held ahead): only with
      # scale to zero, where they keep the last task running.
      dynamic "metrics" {
        for_each = local.scale_to_zero ? [1] : []
        content {
          id          = "in_flight"
          label       = "Messages in flight on ${local.queue_name}"
          return_data = false
          metric_stat {
            metric {
              namespace   = "AWS/SQS"
              metric_name = "ApproximateNumberOfMessagesNotVisible"
              dimensions {
                name  = "QueueName"
                value = local.queue_name
              }
            }
            stat = "Average"
          }
        }
      }

      metrics {
        id          = "backlog_per_task"
        label       = "Visible messages per running task"
        expression  = local.backlog_per_task_expression
        return_data = true
      }
    }
  }
}

# Target tracking cannot scale out from zero tasks (it scales in proportion
# to the running count). With scale to zero, this alarm starts the first
# task when messages wait and none runs; target tracking takes over from
# there. Container Insights may publish nothing for a service with no
# tasks, hence FILL.
resource "aws_appautoscaling_policy" "start_from_zero" {
  count              = local.scale_to_zero ? 1 : 0
  name               = "${var.name}-start-from-zero"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.this.service_namespace
  scalable_dimension = aws_appautoscaling_target.this.scalable_dimension
  resource_id        = aws_appautoscaling_target.this.resource_id

  step_scaling_policy_configuration {
    adjustment_type         = "ExactCapacity"
    cooldown                = var.scale_out_cooldown
    metric_aggregation_type = "Maximum"

    step_adjustment {
      metric_interval_lower_bound = 0
      scaling_adjustment          = 1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "start_from_zero" {
  count             = local.scale_to_zero ? 1 : 0
  alarm_name        = "${var.name}-start-from-zero"
  alarm_description = "Messages wait on ${local.queue_name} and no ${var.name} task runs: start one (scale to zero)."

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "waiting_without_tasks"
    expression  = "IF(FILL(tasks, 0) == 0, visible, 0)"
    label       = "Visible messages while no task runs"
    return_data = true
  }

  metric_query {
    id = "visible"
    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      dimensions  = { QueueName = local.queue_name }
      period      = 60
      stat        = "Maximum"
    }
  }

  metric_query {
    id = "tasks"
    metric {
      namespace   = "ECS/ContainerInsights"
      metric_name = "RunningTaskCount"
      dimensions  = { ClusterName = local.cluster_name, ServiceName = aws_ecs_service.this.name }
      period      = 60
      stat        = "Maximum"
    }
  }

  alarm_actions = [aws_appautoscaling_policy.start_from_zero[0].arn]
  tags          = var.tags
}

# ---------------------------------------------------------------------------
# Alarms
# ---------------------------------------------------------------------------

resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  alarm_name        = "${var.name}-dlq-not-empty"
  alarm_description = "Objects s3-ingest could not ingest are waiting on ${local.dlq_name}. Each message is a JSON envelope with bucket, key, error_kind and error; fix the cause, then redrive or delete them."

  namespace   = "AWS/SQS"
  metric_name = "ApproximateNumberOfMessagesVisible"
  dimensions  = { QueueName = local.dlq_name }
  statistic   = "Maximum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  # SQS stops publishing metrics for a queue that is empty and untouched for
  # six hours; a DLQ holding messages keeps publishing.
  treat_missing_data = "notBreaching"

  alarm_actions = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions    = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "oldest_message_age" {
  alarm_name        = "${var.name}-oldest-message-age"
  alarm_description = "The oldest message on ${local.queue_name} is older than ${var.oldest_message_age_alarm_seconds} s: s3-ingest is not keeping up (autoscaling_max_capacity reached?) or not consuming (tasks failing, permissions, sink unavailable). Check the service's events and logs."

  namespace   = "AWS/SQS"
  metric_name = "ApproximateAgeOfOldestMessage"
  dimensions  = { QueueName = local.queue_name }
  statistic   = "Maximum"
  period      = 60

  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_message_age_alarm_seconds
  evaluation_periods  = var.alarm_evaluation_periods
  treat_missing_data  = "notBreaching"

  alarm_actions = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions    = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  tags          = var.tags
}

# ---------------------------------------------------------------------------
# Alarms on the worker's own metrics (EMF lines, metrics_namespace)
# ---------------------------------------------------------------------------

locals {
  # Sums over 5 minutes of the worker's EMF metrics, by alarm name suffix.
  rate_alarms = var.metrics_namespace == null ? {} : merge(
    {
      "dead-letter-rate" = {
        metric      = "ObjectsDeadLettered"
        dimensions  = { Service = var.name }
        threshold   = var.dead_letter_alarm_threshold
        description = "More than ${var.dead_letter_alarm_threshold} objects dead-lettered by ${var.name} within 5 minutes: a vendor's files or a route's schema changed. Logs Insights: filter error_kind by route; the DLQ envelopes say why."
      }
      "retry-rate" = {
        metric      = "ObjectsRetried"
        dimensions  = { Service = var.name }
        threshold   = var.retry_alarm_threshold
        description = "More than ${var.retry_alarm_threshold} objects of ${var.name} failed transiently within 5 minutes (S3 throttling, a sink timing out or refusing). The ObjectsRetried metric by sink and error_kind says where."
      }
    },
    {
      for sink in var.retry_alarm_sinks : "retry-rate-${sink}" => {
        metric      = "ObjectsRetried"
        dimensions  = { Service = var.name, sink = sink }
        threshold   = var.retry_alarm_threshold
        description = "More than ${var.retry_alarm_threshold} objects of ${var.name} failed on sink ${sink} within 5 minutes: the sink is slow, refusing or out (an outage also shows in /readyz and DeploymentProblems)."
      }
    },
  )
}

resource "aws_cloudwatch_metric_alarm" "worker_rate" {
  for_each          = local.rate_alarms
  alarm_name        = "${var.name}-${each.key}"
  alarm_description = each.value.description

  namespace   = var.metrics_namespace
  metric_name = each.value.metric
  dimensions  = each.value.dimensions
  statistic   = "Sum"
  period      = 300

  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"

  alarm_actions = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions    = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  tags          = var.tags
}

# A delete SQS refused means a committed file is delivered again (the sinks
# absorb it, but something is wrong: permissions, a receipt handle gone
# stale); a DLQ send that fails leaves poison on the source queue.
resource "aws_cloudwatch_metric_alarm" "acknowledgement_failures" {
  count             = var.metrics_namespace == null ? 0 : 1
  alarm_name        = "${var.name}-acknowledgement-failures"
  alarm_description = "${var.name} could not delete messages or send envelopes to ${local.dlq_name}: check the task role's sqs:DeleteMessage / sqs:SendMessage and the queues' KMS key policy."

  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  treat_missing_data  = "notBreaching"

  metric_query {
    id          = "failures"
    expression  = "FILL(deletes, 0) + FILL(dlq_sends, 0)"
    label       = "Delete and DLQ send failures"
    return_data = true
  }

  metric_query {
    id = "deletes"
    metric {
      namespace   = var.metrics_namespace
      metric_name = "DeleteFailures"
      dimensions  = { Service = var.name }
      period      = 300
      stat        = "Sum"
    }
  }

  metric_query {
    id = "dlq_sends"
    metric {
      namespace   = var.metrics_namespace
      metric_name = "DeadLetterSendFailures"
      dimensions  = { Service = var.name }
      period      = 300
      stat        = "Sum"
    }
  }

  alarm_actions = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions    = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  tags          = var.tags
}
