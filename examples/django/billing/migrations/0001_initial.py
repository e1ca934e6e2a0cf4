from django.db import migrations, models

shadow_expect = {"must": ["add table public.customers"]}


class Migration(migrations.Migration):
    initial = True
    dependencies = []
    operations = [
        migrations.CreateModel(
            name="Customer",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
                ("email", models.TextField(unique=True)),
                ("name", models.TextField()),
            ],
            options={"db_table": "customers"},
        ),
    ]
