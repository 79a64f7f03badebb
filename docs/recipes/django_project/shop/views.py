import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .jobs import Welcome, send_welcome
from .models import Customer


def sign_up(email: str) -> Customer:
    """Create the customer; the welcome job is enqueued only once the row is
    committed. Enqueued inside the transaction, a fast worker could look the
    customer up before the commit (and find nothing), or a rollback would
    leave a job for a customer who never existed."""
    with transaction.atomic():
        customer = Customer.objects.create(email=email)
        transaction.on_commit(
            # The key makes a retried request enqueue nothing twice.
            lambda: send_welcome.enqueue_sync(
                Welcome(customer_id=customer.pk), key=f"welcome:{customer.pk}"
            )
        )
    return customer


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    customer = sign_up(json.loads(request.body)["email"])
    return JsonResponse({"customer": customer.pk}, status=201)
