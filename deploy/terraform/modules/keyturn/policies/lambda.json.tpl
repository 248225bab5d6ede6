{
  "Version": "2012-10-17",
  "Statement": [
    {
      "Sid": "ListOrganizationAccounts",
      "Effect": "Allow",
      "Action": "organizations:ListAccounts",
      "Resource": "*"
    },
    {
      "Sid": "AssumeOrganizationRole",
      "Effect": "Allow",
      "Action": "sts:AssumeRole",
      "Resource": "arn:${Partition}:iam::*:role/KeyturnRotator",
      "Condition": {
        "StringEquals": {
          "aws:ResourceOrgID": "${OrganizationId}"
        }
      }
    },
    {
      "Sid": "Journal",
      "Effect": "Allow",
      "Action": [
        "dynamodb:ConditionCheckItem",
        "dynamodb:DeleteItem",
        "dynamodb:DescribeTable",
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:Query",
        "dynamodb:Scan",
        "dynamodb:UpdateItem"
      ],
      "Resource": "arn:${Partition}:dynamodb:${Region}:${Account}:table/keyturn-journal"
    },
    {
      "Sid": "JournalSealing",
      "Effect": "Allow",
      "Action": [
        "kms:Decrypt",
        "kms:GenerateDataKey"
      ],
      "Resource": "arn:${Partition}:kms:${Region}:${Account}:key/*",
      "Condition": {
        "ForAnyValue:StringEquals": {
          "kms:ResourceAliases": "alias/keyturn-journal"
        }
      }
    },
    {
      "Sid": "DeliverToSecretsManager",
      "Effect": "Allow",
      "Action": [
        "secretsmanager:CreateSecret",
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
        "secretsmanager:PutSecretValue",
        "secretsmanager:UpdateSecretVersionStage"
      ],
      "Resource": "arn:${Partition}:secretsmanager:${Region}:${Account}:secret:keyturn/*/*"
    }
  ]
}
