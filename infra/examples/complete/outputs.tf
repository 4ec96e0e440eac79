output "bucket_name" {
  description = "Bucket to upload to."
  value       = module.notification.bucket_name
}

output "queue_url" {
  description = "Ingest queue URL."
  value       = module.notification.queue_url
}

output "dlq_url" {
  description = "Dead-letter queue URL (reason envelopes)."
  value       = module.notification.dlq_url
}

output "kms_key_arn" {
  description = "Queue encryption key (null with SQS-managed encryption)."
  value       = module.notification.kms_key_arn
}

output "sns_topic_arn" {
  description = "Fan-out topic (null unless fanout_via_sns)."
  value       = module.notification.sns_topic_arn
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.service.cluster_name
}

output "service_name" {
  description = "ECS service."
  value       = module.service.service_name
}

output "task_definition_arn" {
  description = "Task definition revision now deployed."
  value       = module.service.task_definition_arn
}

output "log_group_name" {
  description = "Worker logs (JSON)."
  value       = module.service.log_group_name
}
