# The example wires both modules correctly (`terraform test`, run by
# infra/check.sh): applied against a mocked provider, nothing is created.

mock_provider "aws" {
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
  mock_resource "aws_sqs_queue" {
    defaults = {
      arn = "arn:aws:sqs:eu-west-1:123456789012:vendor-ingest"
      url = "https://sqs.eu-west-1.amazonaws.com/123456789012/vendor-ingest"
    }
  }
  mock_resource "aws_s3_bucket" {
    defaults = { id = "acme-vendor-drops-prod", arn = "arn:aws:s3:::acme-vendor-drops-prod" }
  }
  mock_resource "aws_iam_role" {
    defaults = { arn = "arn:aws:iam::123456789012:role/vendor-ingest" }
  }
  mock_resource "aws_cloudwatch_log_group" {
    defaults = { arn = "arn:aws:logs:eu-west-1:123456789012:log-group:/ecs/vendor-ingest" }
  }
  mock_resource "aws_ecs_cluster" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:cluster/vendor-ingest" }
  }
  mock_resource "aws_ecs_task_definition" {
    defaults = { arn = "arn:aws:ecs:eu-west-1:123456789012:task-definition/vendor-ingest:1" }
  }
}

# The values of terraform.tfvars.example.
variables {
  region      = "eu-west-1"
  name        = "vendor-ingest"
  bucket_name = "acme-vendor-drops-prod"
  filters = [
    { prefix = "incoming/", suffix = ".csv" },
    { prefix = "incoming/", suffix = ".csv.gz" },
    { prefix = "incoming/", suffix = ".parquet" },
  ]
  image = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/s3-ingest:0.1.0"
  worker_environment = {
    S3_INGEST__ROUTES__ORDERS__KEY_GLOB = "incoming/orders/**"
    S3_INGEST__ROUTES__ORDERS__SINK     = "lake"
    S3_INGEST__SINKS__LAKE__TYPE        = "parquet_dir"
    S3_INGEST__SINKS__LAKE__PATH        = "/data/lake"
  }
  vpc_id     = "vpc-0123456789abcdef0"
  subnet_ids = ["subnet-0123456789abcdef0"]
}

run "example_wires_the_modules" {
  command = apply

  assert {
    condition     = output.bucket_name == "acme-vendor-drops-prod"
    error_message = "the example creates the bucket"
  }
  assert {
    condition     = module.service.worker_environment["S3_INGEST__QUEUE__MAX_RECEIVE_COUNT"] == "5"
    error_message = "the worker dead-letters after 5 receives"
  }
  assert {
    condition     = module.service.worker_environment["S3_INGEST__QUEUE__URL"] == module.notification.queue_url
    error_message = "the worker reads the notification module's queue"
  }
}
