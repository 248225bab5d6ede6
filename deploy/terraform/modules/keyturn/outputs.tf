output "function_arn" {
  description = "The keyturn Lambda function."
  value       = aws_lambda_function.keyturn.arn
}

output "rotator_role_arn" {
  description = "The function's role: RotatorRoleArn of every member account's KeyturnRotator stack."
  value       = aws_iam_role.function.arn
}

output "journal_table_name" {
  description = "The DynamoDB journal table."
  value       = aws_dynamodb_table.journal.name
}

output "journal_key_arn" {
  description = "The KMS key that seals journaled secrets (alias/keyturn-journal)."
  value       = aws_kms_key.journal.arn
}

output "alarm_topic_arn" {
  description = "The SNS topic the error alarms notify."
  value       = aws_sns_topic.alarms.arn
}
