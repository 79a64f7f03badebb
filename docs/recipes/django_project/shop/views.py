import json

from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .jobs import Welcome, send_welcome
from .models import Customer


def sign_up(email: str) -> Customer:
    """Create the customer and enqueue its welcome job, so that the job
    exists exactly when the customer does: a job enqueued before the commit
    could run before the row is visible, and a rollback would leave a job
    for a customer who never existed. The key makes a retried request
    enqueue nothing twice."""
    with transaction.atomic():
        customer = Customer.objects.create(email=email)
        welcome, key = Welcome(customer_id=customer.pk), f"welcome:{customer.pk}"
        if settings.CONVEYOR_SHARES_DATABASE:
            # conveyor's tables are in this PostgreSQL database: the job is
            # stored by this very transaction, on Django's connection. No
            # window where the customer is committed and its job not yet.
            send_welcome.enqueue_sync(welcome, key=key, connection=connection)
        else:
            # Another store: enqueue once the customer is committed.
            transaction.on_commit(lambda: send_welcome.enqueue_sync(welcome, key=key))
    return customer


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    customer = sign_up(json.loads(request.body)["email"])
    return JsonResponse({"customer": customer.pk}, status=201)
