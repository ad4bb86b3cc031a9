"""A synthetic support log shaped like the public Bitext customer-support set (not reachable offline here), for
measuring the defaults on data unlike the built-in set: columns `flags,instruction,category,intent,response`, 12
intents, casual question wordings with `{{Order Number}}`-style placeholders, answers of 3-5 numbered steps over
several lines. Original text written for ecombot; the same seed writes the same file.

    python benchmarks/support_log_csv.py --rows-per-intent 40 --output support.csv
    ecombot train --data support.csv --knowledge probe --max-steps 100 --output runs/probe
    ecombot evaluate --adapter runs/probe --limit 24
"""

from __future__ import annotations

import argparse
import csv
import random

INTENTS = {  # intent: (category, question wordings, answer steps)
    "cancel_order": ("ORDER",
        ["I want to cancel order {{Order Number}}", "how do I cancel my purchase",
         "need to cancel an order i made yesterday", "can you help me cancel order {{Order Number}}",
         "cancel my order please", "what is the way to call off an order"],
        ["Go to your account and sign in", "Open 'Order History' and find order {{Order Number}}",
         "Click 'Cancel Order' next to it", "Pick a reason and confirm",
         "You will get a confirmation e-mail within 24 hours"]),
    "change_shipping_address": ("SHIPPING",
        ["I need to change my shipping address", "how can i update the delivery address for order {{Order Number}}",
         "wrong address on my order", "change address after ordering", "my shipping address is incorrect",
         "update where my package goes"],
        ["Sign in to your account", "Go to 'Order History' and select order {{Order Number}}",
         "Choose 'Edit Shipping Address'", "Enter the new address and save",
         "Changes are possible until the order ships, usually within 12 hours"]),
    "track_order": ("ORDER",
        ["where is my order", "track order {{Order Number}}", "how do i see the status of my package",
         "has my order shipped yet", "i want to know where order {{Order Number}} is", "check delivery status"],
        ["Open the shipping e-mail we sent you", "Click the tracking link, or copy the tracking number",
         "Enter it on the carrier's website", "Allow 24 hours after shipping for the first scan",
         "Contact us at {{Customer Support Email}} if nothing shows after 3 days"]),
    "get_refund": ("REFUND",
        ["i want a refund", "how do I get my money back for order {{Order Number}}", "request a refund",
         "refund for a damaged item", "can i get reimbursed", "how to ask for a refund"],
        ["Sign in and open 'Returns & Refunds'", "Select order {{Order Number}} and the items",
         "Choose the refund reason and upload a photo if the item is damaged",
         "Send the item back with the prepaid label",
         "The refund reaches your card within 5 to 7 business days after we receive it"]),
    "payment_issue": ("PAYMENT",
        ["my payment was declined", "problem paying for my order", "card not accepted at checkout",
         "why did my payment fail", "i cannot complete payment", "payment error on checkout"],
        ["Check that the card number, expiry date and CVV are correct",
         "Make sure the billing address matches your bank's records", "Try another card or PayPal",
         "Clear your browser cache and try again", "If it still fails, call {{Customer Support Phone Number}}"]),
    "delete_account": ("ACCOUNT",
        ["delete my account", "how do i close my account", "remove my profile", "i want to delete my user account",
         "close my {{Account Type}} account", "erase my account data"],
        ["Sign in and open 'Account Settings'", "Scroll to 'Privacy'", "Click 'Delete Account'",
         "Confirm with your password", "Your data is erased within 30 days"]),
    "recover_password": ("ACCOUNT",
        ["forgot my password", "how do i reset my password", "cannot log in, lost password", "password recovery",
         "i need a new password", "reset password for {{Account Type}} account"],
        ["Go to the sign-in page", "Click 'Forgot password?'", "Enter the e-mail address of your account",
         "Open the reset link we send (valid for 2 hours)", "Choose a new password of at least 8 characters"]),
    "newsletter_subscription": ("NEWSLETTER",
        ["how do i unsubscribe from the newsletter", "stop sending me emails", "sign up for your newsletter",
         "manage my newsletter subscription", "too many promo emails", "subscribe to offers"],
        ["Sign in and open 'Account Settings'", "Select 'Communication Preferences'", "Tick or untick 'Newsletter'",
         "Save your changes", "Changes apply within 48 hours"]),
    "delivery_options": ("DELIVERY",
        ["what delivery options do you have", "how fast can you ship", "do you offer express shipping",
         "shipping methods available", "can i get next day delivery", "how long does standard delivery take"],
        ["Standard delivery takes 3 to 5 business days and is free over $50",
         "Express delivery takes 1 to 2 business days for $9.95",
         "Next-day delivery is $19.95 when you order before 2 pm", "Pick the option at checkout",
         "Delivery times start when the order ships"]),
    "contact_human_agent": ("CONTACT",
        ["i want to talk to a person", "connect me with an agent", "can i speak to a human", "real person please",
         "need customer service representative", "transfer me to an agent"],
        ["Our agents are available Monday to Friday, 9 am to 6 pm", "Call {{Customer Support Phone Number}}",
         "Or start a live chat at {{Website URL}}", "Have your order number {{Order Number}} ready",
         "Average waiting time is under 5 minutes"]),
    "check_invoice": ("INVOICE",
        ["where can i find my invoice", "i need an invoice for order {{Order Number}}", "download invoice",
         "get a receipt for my purchase", "send me the bill", "how do i see my invoices"],
        ["Sign in to your account", "Open 'Order History'", "Select order {{Order Number}}",
         "Click 'Download Invoice' to get a PDF", "Invoices are available 24 hours after the order ships"]),
    "complaint": ("FEEDBACK",
        ["i want to file a complaint", "very unhappy with your service", "how do i complain about a product",
         "complaint about my delivery", "submit a complaint", "bad experience with order {{Order Number}}"],
        ["We are sorry about your experience", "Fill in the complaint form at {{Website URL}}/complaints",
         "Describe the problem and add order {{Order Number}}", "Attach photos if it concerns a product",
         "A manager replies within 2 business days"]),
}
OPENERS = ["I'm sorry to hear that. ", "Thanks for reaching out. ", "I understand. ", "Happy to help. ", ""]
PREFIXES = ["", "hi, ", "hello ", "could you tell me ", "pls ", "i need help: ", "hey, "]


def rows(per_intent: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for intent, (category, questions, steps) in INTENTS.items():
        for _ in range(per_intent):
            question = rng.choice(PREFIXES) + rng.choice(questions) + rng.choice(["", "?", "??", " thanks"])
            body = "\n".join(f"{k + 1}. {step}." for k, step in enumerate(steps[: rng.randint(3, len(steps))]))
            answer = f"{rng.choice(OPENERS)}Here is how to handle it:\n{body}\nIf you need anything else, let me know."
            out.append({"flags": "B", "instruction": question, "category": category, "intent": intent,
                        "response": answer})
    rng.shuffle(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows-per-intent", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", default="support.csv")
    args = parser.parse_args()
    data = rows(args.rows_per_intent, args.seed)
    with open(args.output, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    print(f"{args.output}: {len(data)} rows, {len(INTENTS)} intents")


if __name__ == "__main__":
    main()
