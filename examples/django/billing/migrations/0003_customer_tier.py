"""Customer tiers: a column, and a RunPython data migration that fills it (with its reverse)."""

from django.db import migrations, models
from django.db.models import Sum

# Customers who paid 1,000.00 or more become gold; adding the column with its default touches every row.
shadow_expect = {
    "must": ["add column public.customers.tier", "update rows public.customers"],
    "rows": {"public.customers": {"inserted": 0, "deleted": 0}},
}


def gold_tiers(apps, schema_editor):
    Customer = apps.get_model("billing", "Customer")
    Invoice = apps.get_model("billing", "Invoice")
    rich = (Invoice.objects.filter(status="paid").values("customer_id")
            .annotate(total=Sum("amount_cents")).filter(total__gte=100000).values("customer_id"))
    Customer.objects.filter(id__in=rich).update(tier="gold")


def standard_tiers(apps, schema_editor):
    apps.get_model("billing", "Customer").objects.update(tier="standard")


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_invoice")]
    operations = [
        migrations.AddField(model_name="customer", name="tier", field=models.TextField(default="standard")),
        migrations.RunPython(gold_tiers, standard_tiers),
    ]
