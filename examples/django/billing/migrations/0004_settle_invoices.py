"""Settle paid invoices: a column, and RunSQL with its reverse."""

from django.db import migrations, models

shadow_expect = {
    "must": ["add column public.invoices.settled_at", "update rows public.invoices"],
    "rows": {"public.invoices": {"updated": "<= 500", "inserted": 0, "deleted": 0}},
}


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_customer_tier")]
    operations = [
        migrations.AddField(model_name="invoice", name="settled_at", field=models.DateTimeField(null=True)),
        migrations.RunSQL(
            "UPDATE invoices SET status = 'settled', settled_at = '2026-12-01' WHERE status = 'paid'",
            reverse_sql="UPDATE invoices SET status = 'paid' WHERE status = 'settled'",
        ),
    ]
