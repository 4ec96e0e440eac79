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
    min_tasks = 3
    max_tasks = 2
  }
  expect_failures = [aws_ecs_task_definition.this]
}
