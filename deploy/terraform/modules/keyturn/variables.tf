variable "function_name" {
  description = "Name of the keyturn Lambda function (and prefix of its resources)."
  type        = string
  default     = "keyturn"
}

variable "package_path" {
  description = "The zip built by `cargo lambda build --release --arm64 --output-format zip`, with keyturn.toml added beside bootstrap."
  type        = string
}

variable "schedule_expression" {
  description = "When the fleet run starts (EventBridge Scheduler rate() or cron(), UTC)."
  type        = string
  default     = "rate(1 day)"
}

variable "alarm_email" {
  description = "Who is told when the function fails (confirm the SNS subscription mail)."
  type        = string
}

variable "organization_id" {
  description = "The Organization whose KeyturnRotator roles the function may assume (o-...)."
  type        = string
  validation {
    condition     = can(regex("^o-[a-z0-9]{10,32}$", var.organization_id))
    error_message = "organization_id looks like o-abcdefghij."
  }
}

variable "journal_table_name" {
  description = "DynamoDB journal table ([journal] table of keyturn.toml)."
  type        = string
  default     = "keyturn-journal"
}

variable "log_retention_days" {
  description = "Days the function's CloudWatch logs are kept."
  type        = number
  default     = 365
}
