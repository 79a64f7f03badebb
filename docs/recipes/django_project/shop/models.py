from django.db import models


class Customer(models.Model):
    email = models.EmailField(unique=True)
    welcomed_at = models.DateTimeField(null=True, blank=True)
