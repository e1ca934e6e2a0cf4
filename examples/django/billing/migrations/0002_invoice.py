import django.db.models.deletion
from django.db import migrations, models

shadow_expect = {"must": ["add table public.invoices"]}


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.CreateModel(
            name="Invoice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("amount_cents", models.IntegerField()),
                ("status", models.TextField(default="open")),
                ("customer", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, to="billing.customer")),
            ],
            options={"db_table": "invoices"},
        ),
    ]
