# Example root module: keyturn in the Organization's management (or delegated
# administrator) account. Member accounts get the KeyturnRotator role from
# deploy/cloudformation/member-role.yaml (a StackSet) with RotatorRoleArn set to the
# rotator_role_arn output.

terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" {
  description = "Region of the function, its journal table and key."
  type        = string
  default     = "us-east-1"
}

variable "alarm_email" {
  description = "Who is told when the function fails."
  type        = string
}

variable "organization_id" {
  description = "The Organization id (o-...)."
  type        = string
}

module "keyturn" {
  source          = "../../modules/keyturn"
  package_path    = "${path.root}/keyturn-lambda.zip"
  alarm_email     = var.alarm_email
  organization_id = var.organization_id
}

output "rotator_role_arn" {
  description = "RotatorRoleArn for the member-role StackSet."
  value       = module.keyturn.rotator_role_arn
}

output "function_arn" {
  description = "The keyturn function."
  value       = module.keyturn.function_arn
}
