"""The shop's billing tables, as the four migrations in billing/migrations/ build them."""

from django.db import models


class Customer(models.Model):
    email = models.TextField(unique=True)
    name = models.TextField()
    tier = models.TextField(default="standard")  # 0003

    class Meta:
        db_table = "customers"


class Invoice(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT)
    amount_cents = models.IntegerField()
    status = models.TextField(default="open")
    settled_at = models.DateTimeField(null=True)  # 0004

    class Meta:
        db_table = "invoices"
