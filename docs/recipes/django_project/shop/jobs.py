"""The project's Conveyor and its job types. Views enqueue through the handles;
`python manage.py conveyor_worker` runs them."""

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone
from pydantic import BaseModel

from conveyor import Conveyor, JobContext

from .models import Customer

conveyor = Conveyor(settings.CONVEYOR_URL)


class Welcome(BaseModel):
    customer_id: int


@conveyor.job("shop.welcome", retries=3, timeout=30)
def send_welcome(payload: Welcome, ctx: JobContext) -> dict[str, str]:
    # A plain `def` handler runs in a worker thread, so the ORM is used as in a
    # view. Outside a request nobody closes the thread's connection: we do.
    try:
        customer = Customer.objects.get(pk=payload.customer_id)
        ctx.log("welcoming", email=customer.email)
        customer.welcomed_at = timezone.now()
        customer.save(update_fields=["welcomed_at"])
        return {"email": customer.email}
    finally:
        close_old_connections()
