# keyturn as a Lambda function: the same resources as deploy/sam/template.yaml.
# The function's policy is policies/lambda.json.tpl, the output of
# `keyturn policy --config deploy/examples/lambda.toml --for lambda` (a test keeps it
# identical); regenerate it when keyturn.toml changes.

data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  policy_vars = {
    Partition      = data.aws_partition.current.partition
    Account        = data.aws_caller_identity.current.account_id
    Region         = data.aws_region.current.name
    OrganizationId = var.organization_id
  }
}

resource "aws_kms_key" "journal" {
  description         = "keyturn seals the new secret of a rotation in flight with this key"
  enable_key_rotation = true
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministersTheKey"
      Effect    = "Allow"
      Principal = { AWS = "arn:${local.policy_vars.Partition}:iam::${local.policy_vars.Account}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
}

resource "aws_kms_alias" "journal" {
  name          = "alias/keyturn-journal"
  target_key_id = aws_kms_key.journal.key_id
}

resource "aws_dynamodb_table" "journal" {
  name         = var.journal_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "PK"
  range_key    = "SK"

  attribute {
    name = "PK"
    type = "S"
  }
  attribute {
    name = "SK"
    type = "S"
  }
  ttl {
    attribute_name = "ExpiresAt"
    enabled        = true
  }
  point_in_time_recovery {
    enabled = true
  }
  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.journal.arn
  }
  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.function_name}-dead-letter"
  message_retention_seconds = 1209600
  kms_master_key_id         = "alias/aws/sqs"
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.function_name}-alarms"
  kms_master_key_id = "alias/aws/sns"
}

resource "aws_sns_topic_subscription" "email" {
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

resource "aws_iam_role" "function" {
  name = "${var.function_name}-function"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy" "keyturn" {
  name   = "keyturn"
  role   = aws_iam_role.function.id
  policy = templatefile("${path.module}/policies/lambda.json.tpl", local.policy_vars)
}

resource "aws_iam_role_policy" "runtime" {
  name = "lambda-runtime"
  role = aws_iam_role.function.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "Logs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${aws_cloudwatch_log_group.function.arn}:*"
      },
      {
        Sid      = "DeadLetter"
        Effect   = "Allow"
        Action   = "sqs:SendMessage"
        Resource = aws_sqs_queue.dead_letter.arn
      },
      {
        Sid      = "Tracing"
        Effect   = "Allow"
        Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]
        Resource = "*"
      },
    ]
  })
}

resource "aws_cloudwatch_log_group" "function" {
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "keyturn" {
  function_name                  = var.function_name
  description                    = "keyturn fleet run (see docs/deploy.md)"
  filename                       = var.package_path
  source_code_hash               = filebase64sha256(var.package_path)
  handler                        = "bootstrap"
  runtime                        = "provided.al2023"
  architectures                  = ["arm64"]
  memory_size                    = 256
  timeout                        = 900
  reserved_concurrent_executions = 1
  role                           = aws_iam_role.function.arn

  environment {
    variables = {
      KEYTURN_CONFIG = "/var/task/keyturn.toml"
    }
  }
  dead_letter_config {
    target_arn = aws_sqs_queue.dead_letter.arn
  }
  tracing_config {
    mode = "Active"
  }
  depends_on = [aws_cloudwatch_log_group.function, aws_iam_role_policy.runtime]
}

resource "aws_iam_role" "scheduler" {
  name = "${var.function_name}-scheduler"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "scheduler.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.policy_vars.Account } }
    }]
  })
}

resource "aws_iam_role_policy" "scheduler" {
  name = "invoke-keyturn"
  role = aws_iam_role.scheduler.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Effect   = "Allow"
        Action   = "lambda:InvokeFunction"
        Resource = aws_lambda_function.keyturn.arn
      },
      {
        Effect   = "Allow"
        Action   = "sqs:SendMessage"
        Resource = aws_sqs_queue.dead_letter.arn
      },
    ]
  })
}

resource "aws_scheduler_schedule" "daily" {
  name                = "${var.function_name}-fleet-run"
  schedule_expression = var.schedule_expression
  flexible_time_window {
    mode = "OFF"
  }
  target {
    arn      = aws_lambda_function.keyturn.arn
    role_arn = aws_iam_role.scheduler.arn
    input    = jsonencode({ DryRun = false })
    retry_policy {
      maximum_retry_attempts = 0
    }
    dead_letter_config {
      arn = aws_sqs_queue.dead_letter.arn
    }
  }
}

resource "aws_lambda_permission" "secretsmanager" {
  statement_id   = "SecretsManagerRotation"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.keyturn.function_name
  principal      = "secretsmanager.amazonaws.com"
  source_account = local.policy_vars.Account
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name          = "${var.function_name}-errors"
  alarm_description   = "The keyturn function failed (exit code 1 or 3 of a fleet run, a timeout or a crash). Read its log group and `keyturn history`; see docs/deploy.md."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.keyturn.function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "dead_letter" {
  alarm_name          = "${var.function_name}-dead-letter"
  alarm_description   = "An invocation of the keyturn function was dropped into the dead-letter queue."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dead_letter.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
}
