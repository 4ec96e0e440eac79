# Offline tests of the service module (`terraform test`, run by
# infra/check.sh). The provider is mocked: nothing is created anywhere.

mock_provider "aws" {
  # Policy documents are rendered by the provider; a mock needs valid JSON.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  # ARNs the provider validates where they are used.
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/ingest" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/ingest" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/ingest" }
  }
  mock_resource "aws_appautoscaling_policy" {
    defaults = { arn = "arn:aws:autoscaling:eu-west-1:123456789012:scalingPolicy:11111111-2222-3333-4444-555555555555:resource/ecs/service/ingest/ingest:policyName/ingest" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/ingest:1" }
  }
}

variables {
  name           = "ingest"
  image          = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/s3-ingest:1.4.2"
  queue_url      = "https://sqs.eu-west-1.amazonaws.com/123456789012/ingest"
  queue_arn      = "arn:aws:sqs:eu-west-1:123456789012:ingest"
  dlq_url        = "https://sqs.eu-west-1.amazonaws.com/123456789012/ingest-dlq"
  dlq_arn        = "arn:aws:sqs:eu-west-1:123456789012:ingest-dlq"
  source_buckets = [{ bucket = "acme-vendor-drops", prefixes = ["incoming/"] }]
  subnet_ids     = ["subnet-0123456789abcdef0"]
  vpc_id         = "vpc-0123456789abcdef0"
  environment = {
    S3_INGEST__ROUTES__ALL__KEY_GLOB = "**"
  }
}

run "container_drains_inside_the_stop_timeout" {
  command = apply

  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].stopTimeout == 30
    error_message = "stopTimeout defaults to 30 s"
  }
  assert {
    condition     = output.worker_environment["S3_INGEST__WORKER__SHUTDOWN_GRACE_SECS"] == "25" && output.worker_environment["S3_INGEST__QUEUE__WAIT_TIME_SECS"] == "20"
    error_message = "grace is 5 s below the stop timeout, the long poll no longer"
  }
  assert {
    condition     = output.worker_environment["S3_INGEST__QUEUE__URL"] == var.queue_url && output.worker_environment["S3_INGEST__QUEUE__DLQ_URL"] == var.dlq_url && output.worker_environment["S3_INGEST__ROUTES__ALL__KEY_GLOB"] == "**"
    error_message = "queue URLs and the extra environment reach the container"
  }
}

run "hardened_container" {
  command = apply

  assert {
    condition = alltrue([
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem,
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].user == "65532:65532",
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].healthCheck.command == ["CMD", "s3-ingest", "healthcheck"],
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].command == ["--log-format", "json", "run"],
      jsondecode(aws_ecs_task_definition.this.container_definitions)[0].logConfiguration.logDriver == "awslogs",
    ])
    error_message = "read-only root, non-root user, own health check, JSON logs to CloudWatch"
  }
  assert {
    condition     = toset([for m in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].mountPoints : m.containerPath]) == toset(["/tmp", "/data"])
    error_message = "/tmp and the sink volume are writable mounts"
  }
}

run "least_privilege" {
  command = apply

  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReadSourceObjects"]) == toset(["arn:aws:s3:::acme-vendor-drops/incoming/*"])
    error_message = "reads only the configured prefix"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "DeadLetter"]) == toset(["sqs:SendMessage", "sqs:GetQueueAttributes"])
    error_message = "DLQ: send, plus the start-up reachability check"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ListSourceAcmeVendorDrops"]) == toset(["arn:aws:s3:::acme-vendor-drops"])
    error_message = "ListBucket on the source bucket, so a deleted object reads as 404 (object_missing), not 403"
  }
  assert {
    condition     = flatten([for c in one([for s in data.aws_iam_policy_document.task.statement : s.condition if s.sid == "ListSourceAcmeVendorDrops"]) : [for v in c.values : "${c.variable} ${v}"]]) == ["s3:prefix incoming/*"]
    error_message = "listing is limited to the configured prefixes"
  }
  assert {
    condition     = contains(one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "ConsumeIngestQueue"]), "sqs:SendMessage")
    error_message = "SendMessage on the queue: a handed-back message is re-sent as a copy with its attempt count"
  }
  assert {
    condition     = length([for s in data.aws_iam_policy_document.task.statement : s if startswith(s.sid, "QueueEncryption")]) == 0
    error_message = "no KMS permissions without a queue key"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.execution.statement : s.resources if s.sid == "PullImage"]) == toset(["arn:aws:ecr:eu-west-1:123456789012:repository/team/s3-ingest"])
    error_message = "pulls only from the image's ECR repository"
  }
  assert {
    condition     = length(aws_security_group.this) == 1 && length(aws_security_group.this[0].ingress) == 0
    error_message = "an egress-only security group is created when none is given"
  }
}

run "queue_key_grants_decrypt_and_generate_data_key" {
  command = apply
  variables {
    queue_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "QueueEncryption"]) == toset(["kms:Decrypt", "kms:GenerateDataKey"])
    error_message = "receive needs Decrypt, sending to the DLQ needs GenerateDataKey"
  }
}

run "short_stop_timeout_shortens_the_long_poll" {
  command = apply
  variables {
    stop_timeout = 15
  }
  assert {
    condition     = output.worker_environment["S3_INGEST__WORKER__SHUTDOWN_GRACE_SECS"] == "10" && output.worker_environment["S3_INGEST__QUEUE__WAIT_TIME_SECS"] == "10"
    error_message = "the worker exits before SIGKILL"
  }
}

run "rejects_latest" {
  command = plan
  variables {
    image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/s3-ingest:latest"
  }
  expect_failures = [var.image]
}

run "rejects_an_untagged_image" {
  command = plan
  variables {
    image = "registry.example.com:5000/s3-ingest"
  }
  expect_failures = [var.image]
}

run "rejects_settings_the_module_owns" {
  command = plan
  variables {
    environment = { S3_INGEST__QUEUE__URL = "https://elsewhere" }
  }
  expect_failures = [var.environment]
}

run "rejects_routes_by_index" {
  command = plan
  variables {
    environment = { S3_INGEST__ROUTES__0__KEY_GLOB = "**" }
  }
  expect_failures = [var.environment]
}

run "rejects_root" {
  command = plan
  variables {
    container_user = "0:0"
  }
  expect_failures = [var.container_user]
}

run "rejects_max_below_min" {
  command = plan
  variables {
    autoscaling_min_capacity = 3
    autoscaling_max_capacity = 2
  }
  expect_failures = [aws_ecs_task_definition.this]
}

run "secrets_come_from_secrets_manager_and_ssm_through_the_execution_role" {
  command = apply

  variables {
    secrets = {
      PG_URL    = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ingest/pg-AbCdEf:url::"
      API_TOKEN = "arn:aws:ssm:eu-west-1:123456789012:parameter/ingest/api-token"
    }
    secrets_kms_key_arns = ["arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"]
  }

  assert {
    condition = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].secrets == [
      { name = "API_TOKEN", valueFrom = "arn:aws:ssm:eu-west-1:123456789012:parameter/ingest/api-token" },
      { name = "PG_URL", valueFrom = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ingest/pg-AbCdEf:url::" },
    ]
    error_message = "each secret reaches the container as valueFrom, sorted by name"
  }
  assert {
    condition     = !strcontains(aws_ecs_task_definition.this.container_definitions, "\"PG_URL\",\"value\"")
    error_message = "a secret is never a plain environment value"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.execution.statement : s.resources if s.sid == "ReadSecrets"]) == toset(["arn:aws:secretsmanager:eu-west-1:123456789012:secret:ingest/pg-AbCdEf"])
    error_message = "the execution role reads exactly the secret (without the json-key suffix)"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.execution.statement : s.actions if s.sid == "ReadSecretParameters"]) == toset(["ssm:GetParameters"]) && one([for s in data.aws_iam_policy_document.execution.statement : s.resources if s.sid == "ReadSecretParameters"]) == toset(["arn:aws:ssm:eu-west-1:123456789012:parameter/ingest/api-token"])
    error_message = "the execution role reads exactly the parameter"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.execution.statement : s.resources if s.sid == "DecryptSecrets"]) == toset(var.secrets_kms_key_arns)
    error_message = "the secrets' key may decrypt them"
  }
  assert {
    condition     = length([for s in data.aws_iam_policy_document.task.statement : s if contains(s.actions, "secretsmanager:GetSecretValue")]) == 0
    error_message = "the task role (the worker) does not read the secrets itself"
  }
}

run "no_secrets_no_secret_grants" {
  command = apply

  assert {
    condition     = length([for s in data.aws_iam_policy_document.execution.statement : s if contains(["ReadSecrets", "ReadSecretParameters", "DecryptSecrets"], s.sid)]) == 0
    error_message = "without secrets the execution role reads none"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].secrets == []
    error_message = "no secrets in the container definition"
  }
}

run "rejects_a_secret_that_is_not_an_arn" {
  command = plan

  variables {
    secrets = { PG_URL = "postgres://user:pass@db/ingest" }
  }

  expect_failures = [var.secrets]
}

run "rejects_a_secret_also_set_as_environment" {
  command = plan

  variables {
    secrets     = { PG_URL = "arn:aws:ssm:eu-west-1:123456789012:parameter/ingest/pg" }
    environment = { PG_URL = "postgres://db/ingest" }
  }

  expect_failures = [aws_ecs_task_definition.this]
}

run "config_as_toml_text" {
  command = apply

  variables {
    config = "[[routes]]\nname = \"orders\"\n"
  }

  assert {
    condition     = output.worker_environment["S3_INGEST_CONFIG_TOML"] == "[[routes]]\nname = \"orders\"\n" && !contains(keys(output.worker_environment), "S3_INGEST_CONFIG")
    error_message = "the config text reaches the worker as S3_INGEST_CONFIG_TOML"
  }
}

run "config_from_s3_grants_that_object" {
  command = apply

  variables {
    config_location = "s3://acme-config/s3-ingest/prod.toml"
  }

  assert {
    condition     = output.worker_environment["S3_INGEST_CONFIG"] == "s3://acme-config/s3-ingest/prod.toml"
    error_message = "the location reaches the worker as S3_INGEST_CONFIG"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReadConfigObject"]) == toset(["arn:aws:s3:::acme-config/s3-ingest/prod.toml"])
    error_message = "the task role reads exactly the config object"
  }
}

run "config_from_ssm_grants_that_parameter" {
  command = apply

  variables {
    config_location      = "ssm:///s3-ingest/prod"
    secrets_kms_key_arns = ["arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"]
  }

  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReadConfigParameter"]) == toset(["arn:aws:ssm:eu-west-1:123456789012:parameter/s3-ingest/prod"])
    error_message = "the task role reads exactly the config parameter"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "DecryptConfigParameter"]) == toset(var.secrets_kms_key_arns)
    error_message = "a SecureString config parameter can be decrypted"
  }
}

run "rejects_config_given_two_ways" {
  command = plan

  variables {
    config          = "[queue]\n"
    config_location = "s3://acme-config/s3-ingest/prod.toml"
  }

  expect_failures = [aws_ecs_task_definition.this]
}

run "sinks_outside_aws_get_their_egress" {
  command = apply

  variables {
    egress_rules = [
      { description = "PostgreSQL", from_port = 5432, cidr_blocks = ["10.20.0.0/16"] },
      { description = "ClickHouse", from_port = 8123, to_port = 8123, security_group_ids = ["sg-0123456789abcdef0"] },
    ]
  }

  assert {
    condition     = length([for rule in aws_security_group.this[0].egress : rule if rule.from_port == 5432 && rule.to_port == 5432 && rule.cidr_blocks == tolist(["10.20.0.0/16"])]) == 1
    error_message = "postgres egress to its CIDR"
  }
  assert {
    condition     = length([for rule in aws_security_group.this[0].egress : rule if rule.from_port == 8123 && try(contains(rule.security_groups, "sg-0123456789abcdef0"), false)]) == 1
    error_message = "ClickHouse egress to its security group"
  }
  assert {
    condition     = length([for rule in aws_security_group.this[0].egress : rule if rule.from_port == 443]) == 1
    error_message = "HTTPS to AWS APIs stays"
  }
}

run "rejects_an_egress_rule_without_a_destination" {
  command = plan

  variables {
    egress_rules = [{ description = "nowhere", from_port = 5432 }]
  }

  expect_failures = [var.egress_rules]
}

run "s3_parquet_destinations_and_extra_statements" {
  command = apply

  variables {
    s3_parquet_destinations = [
      { bucket = "acme-lake", prefix = "vendors/", kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/aaaaaaaa-2222-3333-4444-555555555555" },
      { bucket = "acme-exports" },
    ]
    tasks_iam_role_statements = [
      { sid = "PutEvents", actions = ["events:PutEvents"], resources = ["arn:aws:events:eu-west-1:123456789012:event-bus/default"] },
    ]
  }

  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "WriteS3ParquetSinks"]) == toset(["arn:aws:s3:::acme-lake/vendors/*", "arn:aws:s3:::acme-exports/*"]) && one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "WriteS3ParquetSinks"]) == toset(["s3:PutObject", "s3:AbortMultipartUpload"])
    error_message = "the sink may write and abort uploads under its prefix only"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReadS3ParquetCommitMarkers"]) == toset(["arn:aws:s3:::acme-lake/vendors/_s3_ingest/commits/*", "arn:aws:s3:::acme-exports/_s3_ingest/commits/*"]) && one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "ReadS3ParquetCommitMarkers"]) == toset(["s3:GetObject"])
    error_message = "HeadObject of commit markers only, under each sink's prefix"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ListS3ParquetCommitsAcmeLake"]) == toset(["arn:aws:s3:::acme-lake"]) && one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "ListS3ParquetCommitsAcmeLake"]) == toset(["s3:ListBucket"])
    error_message = "ListBucket on the destination bucket, so a missing commit marker is 404, not 403"
  }
  assert {
    condition     = flatten([for c in one([for s in data.aws_iam_policy_document.task.statement : s.condition if s.sid == "ListS3ParquetCommitsAcmeLake"]) : [for v in c.values : "${c.variable} ${v}"]]) == ["s3:prefix vendors/_s3_ingest/commits/*"]
    error_message = "listing is limited to the commit markers' prefix"
  }
  assert {
    condition     = flatten([for c in one([for s in data.aws_iam_policy_document.task.statement : s.condition if s.sid == "ListS3ParquetCommitsAcmeExports"]) : [for v in c.values : "${c.variable} ${v}"]]) == ["s3:prefix _s3_ingest/commits/*"]
    error_message = "a sink without a prefix lists its markers only, not the whole bucket"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "S3ParquetSinkEncryption"]) == toset(["kms:GenerateDataKey", "kms:Decrypt"])
    error_message = "SSE-KMS on the destination"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "PutEvents"]) == toset(["events:PutEvents"])
    error_message = "extra statements reach the task role"
  }
}

run "delta_tables" {
  command = apply

  variables {
    delta_tables = [
      { bucket = "acme-lake", prefix = "/tables/orders/", kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/aaaaaaaa-6666-3333-4444-555555555555" },
      { bucket = "acme-lake", prefix = "tables/prices" },
    ]
  }

  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReadWriteDeltaTables"]) == toset(["arn:aws:s3:::acme-lake/tables/orders/*", "arn:aws:s3:::acme-lake/tables/prices/*"]) && one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "ReadWriteDeltaTables"]) == toset(["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"])
    error_message = "the sink reads and writes under each table's prefix only"
  }
  assert {
    condition     = flatten([for c in one([for s in data.aws_iam_policy_document.task.statement : s.condition if s.sid == "ListDeltaTablesAcmeLake"]) : [for v in c.values : "${c.variable} ${v}"]]) == ["s3:prefix tables/orders/*", "s3:prefix tables/prices/*"]
    error_message = "listing is limited to the tables' prefixes"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "S3ParquetSinkEncryption"]) == toset(["arn:aws:kms:eu-west-1:123456789012:key/aaaaaaaa-6666-3333-4444-555555555555"])
    error_message = "SSE-KMS on a delta table's bucket"
  }
}

run "a_delta_table_at_a_bucket_root_is_refused" {
  command = plan

  variables {
    delta_tables = [{ bucket = "acme-lake", prefix = "/" }]
  }

  expect_failures = [var.delta_tables]
}

run "fargate_spot_through_capacity_providers" {
  command = apply

  variables {
    capacity_provider_strategy = [
      { capacity_provider = "FARGATE", base = 1, weight = 1 },
      { capacity_provider = "FARGATE_SPOT", weight = 3 },
    ]
  }

  assert {
    condition     = length(aws_ecs_service.this.capacity_provider_strategy) == 2 && contains([for p in aws_ecs_service.this.capacity_provider_strategy : "${p.capacity_provider}/${p.base}/${p.weight}"], "FARGATE_SPOT/0/3")
    error_message = "the capacity providers reach the service (launch_type is then left unset: a mocked provider fills it in, so it is not asserted)"
  }
}

run "scales_on_visible_backlog_per_task_by_default" {
  command = apply

  assert {
    condition     = one([for m in aws_appautoscaling_policy.backlog_per_task.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].metrics : m.expression if m.id == "backlog_per_task"]) == "visible / tasks"
    error_message = "backlog per task is visible / tasks"
  }
  assert {
    condition     = length(aws_appautoscaling_policy.start_from_zero) == 0 && length(aws_cloudwatch_metric_alarm.start_from_zero) == 0
    error_message = "no start-from-zero machinery without scale to zero"
  }
}

run "scale_to_zero_waits_for_in_flight_work_and_starts_again" {
  command = apply

  variables {
    autoscaling_min_capacity = 0
  }

  assert {
    condition     = aws_appautoscaling_target.this.min_capacity == 0
    error_message = "the service may run no task"
  }
  assert {
    condition     = strcontains(one([for m in aws_appautoscaling_policy.backlog_per_task.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].metrics : m.expression if m.id == "backlog_per_task"]), "visible + in_flight > 0")
    error_message = "target tracking scales in to zero only when nothing is visible or in flight"
  }
  assert {
    condition     = length([for m in aws_appautoscaling_policy.backlog_per_task.target_tracking_scaling_policy_configuration[0].customized_metric_specification[0].metrics : m if m.id == "in_flight"]) == 1
    error_message = "in-flight messages are part of the metric"
  }
  assert {
    condition     = aws_appautoscaling_policy.start_from_zero[0].step_scaling_policy_configuration[0].adjustment_type == "ExactCapacity" && one([for q in aws_cloudwatch_metric_alarm.start_from_zero[0].metric_query : q.expression if q.id == "waiting_without_tasks"]) == "IF(FILL(tasks, 0) == 0, visible, 0)"
    error_message = "an alarm starts one task when messages wait and none runs"
  }
}

run "key_metrics_reach_cloudwatch_with_alarms" {
  command = apply

  variables {
    retry_alarm_sinks = ["warehouse"]
  }

  assert {
    condition     = output.worker_environment["S3_INGEST__STATUS__EMF_NAMESPACE"] == "s3-ingest" && output.worker_environment["S3_INGEST__STATUS__EMF_SERVICE"] == "ingest"
    error_message = "the worker writes EMF lines under the service's name"
  }
  assert {
    condition     = aws_cloudwatch_metric_alarm.worker_rate["dead-letter-rate"].metric_name == "ObjectsDeadLettered" && aws_cloudwatch_metric_alarm.worker_rate["dead-letter-rate"].dimensions == tomap({ Service = "ingest" }) && aws_cloudwatch_metric_alarm.worker_rate["retry-rate"].metric_name == "ObjectsRetried"
    error_message = "a dead-letter rate alarm on the service"
  }
  assert {
    condition     = aws_cloudwatch_metric_alarm.worker_rate["retry-rate-warehouse"].dimensions == tomap({ Service = "ingest", sink = "warehouse" })
    error_message = "a retry-rate alarm per named sink"
  }
  assert {
    condition     = length(aws_cloudwatch_metric_alarm.acknowledgement_failures) == 1
    error_message = "delete and DLQ-send failures alarm"
  }
}

run "no_namespace_no_emf_and_no_metric_alarms" {
  command = apply

  variables {
    metrics_namespace = null
  }

  assert {
    condition     = !contains(keys(output.worker_environment), "S3_INGEST__STATUS__EMF_NAMESPACE") && length(aws_cloudwatch_metric_alarm.worker_rate) == 0 && length(aws_cloudwatch_metric_alarm.acknowledgement_failures) == 0
    error_message = "nothing is written or alarmed without a namespace"
  }
}

run "ecs_exec_keeps_the_root_filesystem_read_only" {
  command = apply

  variables {
    enable_execute_command = true
  }

  assert {
    condition     = aws_ecs_service.this.enable_execute_command
    error_message = "ECS Exec is enabled on the service"
  }
  assert {
    condition     = jsondecode(aws_ecs_task_definition.this.container_definitions)[0].readonlyRootFilesystem && contains([for m in jsondecode(aws_ecs_task_definition.this.container_definitions)[0].mountPoints : m.containerPath], "/var/lib/amazon/ssm")
    error_message = "the agent writes to volumes, the root stays read-only"
  }
  assert {
    condition     = contains(one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "EcsExec"]), "ssmmessages:OpenDataChannel")
    error_message = "the task role opens the session channels"
  }
}

run "reconcile_sets_its_section_and_grants_its_state_object" {
  command = apply

  variables {
    reconcile = {
      state    = "s3://acme-ops/s3-ingest/reconcile.json"
      prefixes = ["s3://acme-vendor-drops/incoming/orders/"]
    }
  }

  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReconcileState"]) == toset(["arn:aws:s3:::acme-ops/s3-ingest/reconcile.json"]) && one([for s in data.aws_iam_policy_document.task.statement : s.actions if s.sid == "ReconcileState"]) == toset(["s3:GetObject", "s3:PutObject"])
    error_message = "the task role reads and writes the state object only"
  }
  assert {
    condition     = one([for s in data.aws_iam_policy_document.task.statement : s.resources if s.sid == "ReconcileStateLookup"]) == toset(["arn:aws:s3:::acme-ops"]) && flatten([for c in one([for s in data.aws_iam_policy_document.task.statement : s.condition if s.sid == "ReconcileStateLookup"]) : [for v in c.values : "${c.variable} ${v}"]]) == ["s3:prefix s3-ingest/reconcile.json"]
    error_message = "listing is limited to the state object's own key, so a missing state is 404"
  }
  assert {
    condition     = contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "S3_INGEST__RECONCILE__PREFIXES", value = "[\"s3://acme-vendor-drops/incoming/orders/\"]" }) && contains(jsondecode(aws_ecs_task_definition.this.container_definitions)[0].environment, { name = "S3_INGEST__RECONCILE__GRACE_SECS", value = "900" })
    error_message = "the reconcile section reaches the worker as environment overrides"
  }
}

run "reconcile_prefixes_must_be_source_grants" {
  command = plan

  variables {
    reconcile = {
      state    = "s3://acme-ops/s3-ingest/reconcile.json"
      prefixes = ["s3://someone-elses-bucket/"]
    }
  }

  expect_failures = [aws_ecs_task_definition.this]
}

run "no_reconcile_no_state_grant" {
  command = plan

  assert {
    condition     = length([for s in data.aws_iam_policy_document.task.statement : s if s.sid == "ReconcileState"]) == 0
    error_message = "without reconcile there is no state grant"
  }
}
