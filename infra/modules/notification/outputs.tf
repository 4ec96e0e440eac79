output "queue_url" {
  description = "URL of the ingest queue: the worker's queue.url (S3_INGEST__QUEUE__URL)."
  value       = aws_sqs_queue.this.id
}

output "queue_arn" {
  description = "ARN of the ingest queue (for the worker's IAM policy and the alarms)."
  value       = aws_sqs_queue.this.arn
}

output "queue_name" {
  description = "Name of the ingest queue (the QueueName dimension of its CloudWatch metrics)."
  value       = aws_sqs_queue.this.name
}

output "dlq_url" {
  description = "URL of the dead-letter queue: the worker's queue.dlq_url (S3_INGEST__QUEUE__DLQ_URL)."
  value       = aws_sqs_queue.dlq.id
}

output "dlq_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "dlq_name" {
  description = "Name of the dead-letter queue."
  value       = aws_sqs_queue.dlq.name
}

output "bucket_name" {
  description = "Name of the source bucket (created or existing)."
  value       = local.bucket_name
}

output "bucket_arn" {
  description = "ARN of the source bucket."
  value       = local.bucket_arn
}

output "kms_key_arn" {
  description = "ARN of the customer managed key encrypting the queue, DLQ and topic (null with encryption = \"sqs-managed\"). The worker needs kms:Decrypt and kms:GenerateDataKey on it (service module: queue_kms_key_arn)."
  value       = local.kms_key_arn
}

output "sns_topic_arn" {
  description = "ARN of the fan-out topic (null unless fanout_via_sns); other consumers subscribe here."
  value       = var.fanout_via_sns ? aws_sns_topic.this[0].arn : null
}
