"""Build ecombot's built-in dataset: original support conversations for the fictional store Harbor & Pine.

Everything here was written for the project; answers follow src/ecombot/data/builtin/policy.md.
Rerun after changing the policy:  python scripts/build_builtin_dataset.py
The output is deterministic (seeded), so the committed file only changes when this script does.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/ecombot/data/builtin/harbor_pine_support.jsonl"
SEED = 20261126
PER_INTENT = 68  # single-turn examples per intent (before duplicates are dropped)

ITEMS = ["lamp", "duvet cover", "frying pan", "rug", "set of mugs", "throw blanket", "cutting board",
         "bath towels", "desk chair", "curtains", "kettle", "pillow", "vase", "dinner plates", "candle set"]

# intent -> (category, questions, answers). "{item}" is filled from ITEMS; "{order}" becomes the
# placeholder {{Order Number}} that the chat and serving layers fill from the customer's context.
INTENTS: dict[str, tuple[str, list[str], list[str]]] = {
    "shipping_options": ("SHIPPING", [
        "What shipping options do you have?", "which delivery methods can I choose", "Do you offer express shipping?",
        "Can I get next day delivery?", "what are my choices for shipping", "Is there a faster shipping option?",
        "Do you have overnight shipping?", "How can I get my {item} delivered quickly?",
        "what kinds of delivery do you offer", "Can you ship my order faster than standard?",
    ], [
        "We offer three shipping options: Standard (3–5 business days, $4.95, free on orders over $50), Express "
        "(1–2 business days, $12.95) and Next-day ($19.95, for orders placed before 2 pm Eastern time, Monday to "
        "Friday). You choose the option at checkout.",
        "At checkout you can pick Standard shipping (3–5 business days, $4.95 or free over $50), Express (1–2 "
        "business days, $12.95) or Next-day ($19.95 when you order before 2 pm Eastern, Monday to Friday).",
    ]),
    "shipping_time": ("SHIPPING", [
        "How long does shipping take?", "when will my {item} arrive if I order today", "How many days for delivery?",
        "how fast do you ship", "If I order now when would I get it?", "What's the delivery time for standard shipping?",
        "how long until my package gets here", "How soon do you send out orders?", "delivery time?",
        "How long does it take for an order to be processed and shipped?",
    ], [
        "Orders are packed and handed to the carrier within 1 business day. Standard shipping then takes 3–5 "
        "business days, Express 1–2 business days, and Next-day arrives the following business day when you order "
        "before 2 pm Eastern time.",
        "We ship within 1 business day. After that, Standard delivery takes 3–5 business days and Express 1–2 "
        "business days; Next-day orders placed before 2 pm Eastern arrive the next business day.",
    ]),
    "shipping_cost": ("SHIPPING", [
        "How much is shipping?", "Do you offer free shipping?", "what does delivery cost", "Is shipping free over a certain amount?",
        "why am I paying for shipping on my {item}", "How much do you charge for express delivery?",
        "what's the minimum order for free shipping", "shipping fees?", "How much is next day shipping?",
        "Do I have to pay for delivery?",
    ], [
        "Standard shipping is $4.95 and free on orders over $50. Express shipping costs $12.95 and Next-day "
        "shipping $19.95. Shipping to Canada is $14.95 with duties and taxes included.",
        "Shipping is free with Standard delivery on orders over $50; below that it is $4.95. Express is $12.95, "
        "Next-day is $19.95, and Canada is $14.95 including duties and taxes.",
    ]),
    "international_shipping": ("SHIPPING", [
        "Do you ship internationally?", "Can you deliver to Canada?", "do you ship to the UK", "I live in Germany, can I order?",
        "Do you ship outside the US?", "how much is shipping to Canada", "Can I order from Australia?",
        "Will I pay customs fees in Canada?", "do you deliver to Mexico", "which countries do you ship to",
    ], [
        "We ship to the United States and Canada only. Delivery to Canada takes 5–10 business days and costs "
        "$14.95, with duties and taxes already included. We are sorry that we cannot ship to other countries yet.",
        "Right now we deliver only within the United States and Canada. Canadian orders arrive in 5–10 business "
        "days for $14.95, duties and taxes included, so there are no extra customs fees.",
    ]),
    "track_order": ("ORDER", [
        "Where is my order?", "How can I track my order {order}?", "I want to know where my package is",
        "can u track order {order} for me", "Has my {item} shipped yet?", "Where can I find my tracking number?",
        "What's the status of order {order}?", "I haven't received a tracking link", "track my parcel please",
        "My tracking number shows no updates",
    ], [
        "You can follow order {order} with the tracking link we e-mailed when it shipped; the same link is on the "
        "Orders page of your account. Please allow up to 24 hours for the first carrier scan to appear.",
        "As soon as order {order} ships, we e-mail you a tracking link, and you will also find it on the Orders "
        "page of your account. The first tracking update can take up to 24 hours to show.",
    ]),
    "cancel_order": ("ORDER", [
        "How do I cancel my order?", "I want to cancel order {order}", "cancel my order pls",
        "Can I still cancel an order I placed this morning?", "I ordered the wrong {item}, can I cancel?",
        "please cancel order {order} immediately", "Is it too late to cancel my order?",
        "i changed my mind, cancel the order", "How can I cancel an order that has already shipped?",
        "I need to cancel a purchase",
    ], [
        "You can cancel order {order} yourself on the Orders page within 1 hour of placing it. After that, contact "
        "us and we will cancel it as long as it has not shipped yet. If it has already shipped, it cannot be "
        "cancelled, but you can return it within 30 days of delivery.",
        "Within 1 hour of ordering, cancel order {order} on the Orders page. Later than that, our support team can "
        "still cancel it if it has not shipped; a shipped order cannot be cancelled but can be returned for free "
        "within 30 days of delivery.",
    ]),
    "change_order": ("ORDER", [
        "Can I add an item to my order?", "I want to change the colour of the {item} in order {order}",
        "how do i modify my order", "Can I remove something from my order?", "I need to change the quantity on my order",
        "Can I swap the {item} in my order for another one?", "Is it possible to edit an order after checkout?",
        "change items in order {order}", "I forgot to add a {item} to my order", "Can you update my order?",
    ], [
        "You can change the items in order {order} on the Orders page within 1 hour of placing it. After that, "
        "contact us and we will update it if it has not shipped yet. Once it has shipped, it can no longer be "
        "changed, but you can exchange items for free within 30 days.",
        "Orders can be edited on the Orders page during the first hour. After that, our team can still change order "
        "{order} for you as long as it has not shipped; after shipping, a free exchange within 30 days is the way to go.",
    ]),
    "change_shipping_address": ("ORDER", [
        "How do I change my shipping address?", "I entered the wrong address for order {order}",
        "can i change the delivery address", "I moved, can you send my order to a new address?",
        "wrong address on my order help", "Can I update the address after I placed the order?",
        "please ship order {order} to a different address", "I made a typo in my street name",
        "Can you redirect my package?", "How can I fix the address on my order?",
    ], [
        "You can change the shipping address of order {order} on the Orders page within 1 hour of placing it. After "
        "that, contact us and we will update it if the order has not shipped yet. Once it has shipped, we can no "
        "longer change the address.",
        "Within the first hour, update the address yourself on the Orders page. Later, contact our support team and "
        "we will correct the address on order {order} as long as it has not shipped yet.",
    ]),
    "return_item": ("RETURNS", [
        "How do I return an item?", "I want to return my {item}", "what is your return policy",
        "Can I send back the {item}? I don't like it", "how many days do I have to return something",
        "I'd like to return part of order {order}", "Do I have to pay for return shipping?",
        "can i return a personalised {item}", "Can I return something I bought on final sale?",
        "how to get a return label",
    ], [
        "You can return unused items in their original packaging within 30 days of delivery. Go to the Orders page, "
        "choose \"Return items\" and print the free prepaid return label. Final-sale and personalised items cannot be "
        "returned.",
        "Returns are accepted within 30 days of delivery for unused items in their original packaging. Create a free "
        "return label on the Orders page under \"Return items\". Please note that final-sale and personalised items "
        "are not returnable.",
    ]),
    "refund_status": ("REFUND", [
        "Where is my refund?", "I returned my {item} but haven't got my money back", "when will i get my refund",
        "How long do refunds take?", "My refund for order {order} hasn't arrived", "status of my refund please",
        "It's been a week since I sent back the {item}, where is my money?", "Has my refund been processed?",
        "When will the refund show on my card?", "i'm still waiting for a refund",
    ], [
        "We issue the refund to your original payment method within 5 business days after your return reaches our "
        "warehouse. Your bank can then take another 3–7 business days to show it. If it has been longer than that, "
        "reply with order {order} and we will check it for you.",
        "Refunds are sent to the original payment method within 5 business days of your return arriving at our "
        "warehouse, and banks usually need 3–7 more business days to display them. If order {order} is past that, "
        "let us know and we will look into it.",
    ]),
    "refund_policy": ("REFUND", [
        "What is your refund policy?", "Do you refund shipping costs?", "Will I get a full refund?",
        "how are refunds paid", "Do you give store credit or money back?", "Can I get a refund instead of an exchange?",
        "is the shipping fee refunded when I return my {item}", "How do refunds work?",
        "Will the refund go back to my PayPal?", "refund rules?",
    ], [
        "Refunds go back to your original payment method within 5 business days after the return reaches our "
        "warehouse. The original shipping fee is refunded only when the return is due to our mistake, such as a "
        "damaged or wrong item.",
        "We refund the item price to the original payment method, including PayPal, within 5 business days of "
        "receiving the return. Shipping fees are refunded only if the return is caused by our error.",
    ]),
    "exchange_item": ("RETURNS", [
        "Can I exchange my {item} for a different colour?", "how do i exchange an item", "I need a different size",
        "Do you do exchanges?", "Can I swap the {item} for another model?", "Is an exchange free?",
        "the {item} is the wrong size, can I exchange it", "exchange part of order {order}",
        "How long do I have to exchange something?", "I want another colour instead",
    ], [
        "Exchanges for another size or colour are free within 30 days of delivery. Go to the Orders page, choose "
        "\"Exchange\" and follow the steps; the item must be unused and in its original packaging.",
        "Yes, you can exchange an unused item for another size or colour for free within 30 days of delivery, "
        "directly from the Orders page under \"Exchange\".",
    ]),
    "payment_methods": ("PAYMENT", [
        "What payment methods do you accept?", "Can I pay with PayPal?", "do you take american express",
        "Can I pay cash on delivery?", "Do you accept Apple Pay?", "what cards can i use",
        "Can I pay by cheque?", "Is Google Pay accepted?", "how can I pay for my {item}",
        "Can I use a gift card to pay?",
    ], [
        "We accept Visa, Mastercard, American Express, Discover, PayPal, Apple Pay, Google Pay and Harbor & Pine "
        "gift cards. We do not accept cash on delivery or cheques.",
        "You can pay with Visa, Mastercard, American Express, Discover, PayPal, Apple Pay, Google Pay or a Harbor & "
        "Pine gift card. Cash on delivery and cheques are not accepted.",
    ]),
    "payment_failed": ("PAYMENT", [
        "My payment was declined", "why does my card keep getting rejected", "Payment failed at checkout",
        "I can't complete my purchase, the payment doesn't go through", "my card was declined but I have money",
        "Was I charged for a failed payment?", "checkout says payment error", "PayPal payment not working",
        "Why can't I pay for the {item}?", "the payment page gives me an error",
    ], [
        "I'm sorry about the trouble. Please check that the billing address and card details match your bank's "
        "records, then try again or use another payment method such as PayPal or Apple Pay. A declined payment is "
        "not charged to your card.",
        "When a payment is declined, first check the card details and the billing address, then try again or choose "
        "another payment method. Don't worry: your card is not charged for a declined payment.",
    ]),
    "installments": ("PAYMENT", [
        "Can I pay in installments?", "Do you offer buy now pay later?", "do you have klarna",
        "Can I split the payment for the {item}?", "Is there a payment plan?", "Can I pay monthly?",
        "is there interest on klarna payments", "minimum order for installments?",
        "Can I spread the cost over several payments?", "pay later option?",
    ], [
        "Yes, with Klarna you can split orders over $35 into 4 interest-free payments. Choose Klarna as the payment "
        "method at checkout.",
        "You can pay in 4 interest-free installments with Klarna on orders over $35; just select Klarna at checkout.",
    ]),
    "get_invoice": ("INVOICE", [
        "How do I get an invoice?", "I need an invoice for order {order}", "where can i download my invoice",
        "Can you send me a receipt?", "I need a business invoice with my company name", "invoice with tax ID please",
        "I didn't get an invoice for my {item}", "Can I get a copy of my invoice?", "Where is my receipt?",
        "I need a VAT invoice",
    ], [
        "The invoice for order {order} is e-mailed as a PDF with the shipping confirmation, and you can download it "
        "at any time from the Orders page. For a business invoice with a company name or tax ID, just ask us and "
        "we will issue it.",
        "You will find the PDF invoice for order {order} on the Orders page; it was also attached to the shipping "
        "confirmation e-mail. If you need a company name or tax ID on it, our support team will issue a business invoice.",
    ]),
    "create_account": ("ACCOUNT", [
        "How do I create an account?", "Do I need an account to order?", "how to sign up", "Can I order as a guest?",
        "I want to register", "Is it possible to checkout without an account?", "How do I open an account?",
        "can i make an account after ordering", "sign up help", "What do I need to create an account?",
    ], [
        "You can create an account with your e-mail address on the \"Sign up\" page. An account is not required: "
        "guest checkout is also available.",
        "Creating an account only takes an e-mail address on the \"Sign up\" page, but you can also check out as a "
        "guest if you prefer.",
    ]),
    "reset_password": ("ACCOUNT", [
        "I forgot my password", "How do I reset my password?", "can't log in to my account", "password reset link not working",
        "I can't remember my password", "How can I change my password?", "the reset link expired",
        "locked out of my account", "help i cant sign in", "I never got the password reset email",
    ], [
        "Click \"Forgot password?\" on the sign-in page and enter your e-mail address. We will send you a reset link "
        "that is valid for 60 minutes; if it has expired, simply request a new one.",
        "Use \"Forgot password?\" on the sign-in page to get a reset link by e-mail. The link is valid for 60 "
        "minutes, so request a new one if it no longer works, and check your spam folder.",
    ]),
    "delete_account": ("ACCOUNT", [
        "How do I delete my account?", "please close my account", "I want to remove my account and data",
        "delete my profile", "Can you deactivate my account?", "How long does account deletion take?",
        "i don't want an account anymore", "Remove all my information", "How can I cancel my account?",
        "Close my customer account please",
    ], [
        "You can delete your account under Settings > Privacy > Delete account. The deletion is completed within "
        "30 days.",
        "Go to Settings > Privacy > Delete account to close your account; we complete the deletion within 30 days.",
    ]),
    "change_email": ("ACCOUNT", [
        "How do I change my email address?", "I need to update the email on my account", "change email",
        "My email address changed", "Can I use a different email for my account?", "update my login email",
        "how to edit my account email", "I want to switch my account to a new email",
        "Where can I change my contact email?", "wrong email on my account",
    ], [
        "You can change your e-mail address under Settings > Account. The new address is then used for sign-in "
        "and for your order e-mails.",
        "Go to Settings > Account to update your e-mail address; it will be used for signing in and for order "
        "notifications.",
    ]),
    "delivery_missing": ("DELIVERY", [
        "My package says delivered but I didn't get it", "The tracking shows delivered but nothing is here",
        "order {order} marked as delivered but not received", "I never received my {item}",
        "someone stole my package", "Parcel delivered to the wrong address", "where is my package it says delivered",
        "I can't find my parcel", "My order never arrived", "delivered but missing",
    ], [
        "I'm sorry your parcel hasn't turned up. Please wait 48 hours, as carriers sometimes mark parcels delivered "
        "early, and check with neighbours and your building. If it still hasn't appeared, contact us with order "
        "{order} and we will open a carrier investigation and reship or refund your order.",
        "Sorry about that. Carriers sometimes scan parcels as delivered a little early, so please allow 48 hours "
        "and check with your neighbours. If order {order} is still missing after that, let us know: we will open "
        "an investigation with the carrier and send a replacement or a refund.",
    ]),
    "delivery_late": ("DELIVERY", [
        "My order is late", "Why hasn't my package arrived yet?", "order {order} is delayed",
        "It's been two weeks and no {item}", "delivery is taking too long", "The estimated date has passed",
        "my parcel is stuck in transit", "Why is my delivery so slow?", "still waiting for my order",
        "tracking hasn't moved in days",
    ], [
        "I'm sorry for the delay. If order {order} is more than 5 business days past its estimated delivery date, "
        "contact us and we will open a trace with the carrier. Otherwise, the tracking link on the Orders page "
        "shows its latest progress.",
        "Sorry that it is taking longer than expected. When a parcel is more than 5 business days past its "
        "estimated date, we open a carrier trace, so please reach out with order {order} if that is the case.",
    ]),
    "damaged_item": ("DELIVERY", [
        "My {item} arrived broken", "the item is damaged", "I received a damaged {item}",
        "the box was crushed and the {item} is cracked", "What do I do if my order arrived damaged?",
        "my {item} is defective out of the box", "part of order {order} was damaged in shipping",
        "the {item} has a scratch", "Do I need to send back the broken item?", "broken on arrival",
    ], [
        "I'm very sorry your {item} arrived damaged. Please report it within 14 days of delivery with a few photos, "
        "on the Orders page or by contacting us. We will send a free replacement or give you a full refund, and you "
        "do not need to send the damaged item back.",
        "Sorry to hear that! Report the damage within 14 days of delivery, with photos, through the Orders page or "
        "our support team. You can choose a free replacement or a full refund, and there is no need to return the "
        "damaged item.",
    ]),
    "wrong_item": ("DELIVERY", [
        "I received the wrong item", "You sent me the wrong {item}", "This isn't what I ordered",
        "got a different colour than I ordered", "wrong product in my package", "order {order} has the wrong item",
        "I ordered a {item} but got something else", "the size is not what I ordered", "you mixed up my order",
        "Wrong item delivered, what now?",
    ], [
        "I'm sorry we sent the wrong item. Please report it within 14 days of delivery with a photo, on the Orders "
        "page or by contacting us. We will ship the right item at no cost and send you a prepaid label to return "
        "the wrong one.",
        "Sorry for the mix-up! Let us know within 14 days of delivery, with a photo, and we will send the correct "
        "item free of charge together with a prepaid return label for the wrong one.",
    ]),
    "warranty_claim": ("WARRANTY", [
        "Is there a warranty?", "My {item} stopped working after a few months", "how do I make a warranty claim",
        "What does your warranty cover?", "my {item} broke after normal use", "how long is the warranty",
        "The handle of my {item} came off", "Is the {item} covered by warranty?", "warranty for order {order}",
        "product defect after 6 months",
    ], [
        "All our products carry a 1-year limited warranty against manufacturing defects, starting from the delivery "
        "date. Please fill in the warranty form on the Help page with your order number and photos, and we will "
        "repair, replace or refund the item.",
        "Your {item} is covered by our 1-year limited warranty against manufacturing defects from the delivery date. "
        "Submit the warranty form on the Help page with order {order} and some photos; the outcome is a repair, a "
        "replacement or a refund.",
    ]),
    "promo_code_issue": ("PROMO", [
        "My promo code isn't working", "How do I use a discount code?", "can i use two promo codes",
        "I forgot to enter my coupon, can you apply it now?", "the discount code says invalid",
        "Does the promo code work on sale items?", "Can I use a code on a gift card?", "my coupon expired",
        "where do I enter the voucher code", "Is there a discount for first orders?",
    ], [
        "Promo codes are entered at checkout, one code per order. They do not apply to gift cards or to items that "
        "are already on sale, and each code shows its expiry date. Unfortunately, a code cannot be added after the "
        "order has been placed.",
        "You can use one promo code per order, entered at checkout. Codes exclude gift cards and sale items and "
        "stop working after their expiry date; they cannot be applied to an order that has already been placed. "
        "New subscribers to our newsletter get a 10% code for their first order.",
    ]),
    "newsletter_subscribe": ("NEWSLETTER", [
        "How do I sign up for your newsletter?", "I want to get your emails", "subscribe to newsletter",
        "Do you have a mailing list?", "Is there a discount for subscribing?", "How can I hear about sales?",
        "add me to your newsletter", "where is the newsletter signup", "Can I get offers by email?",
        "How do I join the mailing list?",
    ], [
        "You can subscribe at the bottom of any page or under Settings > Notifications. New subscribers receive a "
        "10% promo code for their first order.",
        "Sign up with the form at the bottom of any page, or under Settings > Notifications, and you will get a 10% "
        "code for your first order.",
    ]),
    "newsletter_unsubscribe": ("NEWSLETTER", [
        "How do I unsubscribe?", "stop sending me emails", "I get too many emails from you", "remove me from your mailing list",
        "unsubscribe me", "How can I stop the newsletter?", "I still get emails after unsubscribing",
        "opt out of marketing emails", "Please stop the promotional emails", "cancel newsletter subscription",
    ], [
        "Every e-mail has an unsubscribe link at the bottom, and you can also turn the newsletter off under Settings "
        "> Notifications. The change takes effect within 48 hours.",
        "Use the unsubscribe link at the bottom of any of our e-mails or switch it off under Settings > "
        "Notifications; please allow up to 48 hours for the change to take effect.",
    ]),
    "privacy_data": ("PRIVACY", [
        "Do you sell my personal data?", "How do I get a copy of my data?", "what do you do with my information",
        "privacy policy question", "I want to download my personal data", "Who can I contact about privacy?",
        "is my data shared with third parties", "GDPR data request", "How is my personal information used?",
        "Can I see what data you have about me?",
    ], [
        "We never sell your personal data. You can download a copy of your data under Settings > Privacy > Download "
        "my data, and our privacy team answers questions at privacy@harborandpine.example.",
        "Your personal data is never sold. Download everything we hold about you under Settings > Privacy > Download "
        "my data, or write to privacy@harborandpine.example with any privacy question.",
    ]),
    "complaint": ("FEEDBACK", [
        "I want to make a complaint", "I'm very unhappy with your service", "this is unacceptable",
        "Your customer service is terrible", "I want to file a complaint about order {order}",
        "worst shopping experience ever", "I'm disappointed with my {item}", "How do I complain?",
        "nobody answered my emails", "I am not satisfied at all",
    ], [
        "I'm truly sorry for your experience. I have passed your complaint to our customer care team, who will reply "
        "within 2 business days. If it is about a specific order, please add the order number so they can help faster.",
        "I'm sorry we let you down. Your complaint will be handled by our customer care team, who reply within 2 "
        "business days; mentioning the order number helps them resolve it quickly.",
    ]),
    "contact_support": ("CONTACT", [
        "How can I contact you?", "What is your phone number?", "what are your customer service hours",
        "Do you have live chat?", "What's your email address?", "when is support open",
        "Can I call you on Sunday?", "how to reach customer service", "Are you open on weekends?",
        "I need to talk to support",
    ], [
        "You can reach us by live chat from 8 am to 8 pm Eastern time Monday to Friday and 10 am to 6 pm on "
        "Saturday, by phone at 1-800-555-0142 during the same hours, or by e-mail at support@harborandpine.example "
        "(we reply within 24 hours).",
        "Our live chat and phone line (1-800-555-0142) are open 8 am–8 pm Eastern Monday to Friday and 10 am–6 pm "
        "Saturday. You can also e-mail support@harborandpine.example at any time; we answer within 24 hours.",
    ]),
    "human_agent": ("CONTACT", [
        "I want to talk to a human", "Can I speak to a real person?", "get me an agent", "transfer me to customer service",
        "are you a bot? I want a person", "Let me talk to someone", "I need a human representative",
        "connect me to an agent please", "stop, I want a real human", "Can a person call me back?",
    ], [
        "Of course, I'll hand you over to a human agent. Agents are available during live-chat hours, 8 am–8 pm "
        "Eastern Monday to Friday and 10 am–6 pm Saturday; outside those hours we will book a callback for you.",
        "Sure, I am connecting you with a human agent. If you are writing outside live-chat hours (8 am–8 pm "
        "Eastern Monday to Friday, 10 am–6 pm Saturday), we will book a callback instead.",
    ]),
    "gift_card": ("PAYMENT", [
        "Do your gift cards expire?", "How do I check my gift card balance?", "can i buy a gift card",
        "Can I use a gift card and a credit card together?", "my gift card has a balance left",
        "How long is a gift card valid?", "where can I see my gift card balance", "gift card question",
        "Can I use a promo code on a gift card?", "does the gift card work online",
    ], [
        "Harbor & Pine gift cards never expire, and you can see the remaining balance on the gift card page. Gift "
        "cards are accepted as a payment method at checkout; promo codes cannot be used to buy gift cards.",
        "Our gift cards have no expiry date. Check the balance on the gift card page and use the card at checkout "
        "like any other payment method; note that promo codes do not apply to gift card purchases.",
    ]),
    "price_adjustment": ("REFUND", [
        "The price dropped after I bought it", "Can I get the sale price on my {item}?",
        "do you offer price adjustments", "I paid more than the current price", "the {item} went on sale a week after I ordered",
        "Is there a price match?", "can you refund the difference", "I just saw my {item} cheaper on your site",
        "price protection?", "price went down on order {order}",
    ], [
        "If the price of an item drops within 14 days of your purchase, we refund the difference once per item. "
        "Contact us with order {order} and we will apply the adjustment to your original payment method.",
        "Yes: when an item's price drops within 14 days of purchase, we refund the difference, once per item. Just "
        "send us order {order} and the item, and we will process it.",
    ]),
}

GREETINGS = ["", "", "", "", "Hi, ", "Hello, ", "Hey ", "Good morning, ", "hi there ", "Hello! ", "Excuse me, "]
CLOSINGS = ["", "", "", "", " Thanks!", " Thank you.", " thx", " Thanks in advance.", " Please help.",
            " Can you help?", " I appreciate it."]
ANGRY = ["This is ridiculous. ", "I'm really frustrated. ", "Seriously?? ", "I am so annoyed. ",
         "This is the third time I'm asking. ", "Not happy at all. "]
CONTEXTS = ["", "", "", "", "I ordered last week. ", "Quick question: ", "I'm a new customer. ",
            "I bought a {item} from you. ", "Sorry to bother you. ", "I need some help. "]


def typo(text: str, rng: random.Random) -> str:
    """Swap two neighbouring letters in one word, the way people type on phones."""
    words = text.split()
    candidates = [i for i, w in enumerate(words) if len(w) > 4 and w.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    return " ".join(words)


def phrase(template: str, rng: random.Random) -> str:
    """One customer message: a base question in a random register (polite, terse, angry, typo'd)."""
    item = rng.choice(ITEMS)
    q = template.replace("{item}", item).replace("{order}", "{{Order Number}}")
    style = rng.random()
    if style < 0.12:
        q = rng.choice(ANGRY) + q
    elif style < 0.55:
        q = rng.choice(CONTEXTS).replace("{item}", item) + q
    q = rng.choice(GREETINGS) + (q[0].lower() + q[1:] if rng.random() < 0.3 else q) + rng.choice(CLOSINGS)
    if rng.random() < 0.15:
        q = typo(q, rng)
    if rng.random() < 0.12:
        q = q.lower().rstrip("?.!")
    return re.sub(r"\s+", " ", q).strip(), item


def answer(template: str, item: str) -> str:
    return template.replace("{item}", item).replace("{order}", "{{Order Number}}")


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


FOLLOW_UPS = [  # (first intent, follow-up intent, follow-up questions)
    ("return_item", "refund_status", ["And when will I get my money back?", "how long until the refund arrives after that?",
                                      "ok, and the refund goes back to my card?"]),
    ("damaged_item", "refund_policy", ["Will I also get the shipping fee back?", "do you refund shipping for that too?"]),
    ("track_order", "delivery_late", ["The tracking hasn't changed for a week, what now?", "it's already 6 days late though"]),
    ("cancel_order", "return_item", ["It already shipped. What can I do?", "too late, it shipped. can I return it?"]),
    ("payment_failed", "payment_methods", ["What other payment options do you have?", "which other methods can I use?"]),
    ("shipping_options", "international_shipping", ["Do you also ship to Canada?", "and what about Canada?"]),
    ("complaint", "human_agent", ["I want to talk to a real person about this.", "Can I speak to someone now?"]),
    ("reset_password", "change_email", ["I also need to change my email address, how?", "and how do I update my email?"]),
    ("newsletter_subscribe", "promo_code_issue", ["How do I use the 10% code?", "where do I enter that code?"]),
    ("shipping_cost", "shipping_time", ["And how long does standard take?", "how many days is that?"]),
    ("warranty_claim", "contact_support", ["Can I call you about it instead?", "what's your phone number?"]),
    ("exchange_item", "return_item", ["Actually I'd rather return it. How?", "can I just return it instead?"]),
]


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows, seen = [], set()
    for intent, (category, questions, answers) in INTENTS.items():
        made, tries = 0, 0
        while made < PER_INTENT and tries < PER_INTENT * 20:
            tries += 1
            q, item = phrase(rng.choice(questions), rng)
            if normalise(q) in seen:
                continue
            seen.add(normalise(q))
            rows.append({"messages": [{"role": "user", "content": q},
                                      {"role": "assistant", "content": answer(rng.choice(answers), item)}],
                         "intent": intent, "category": category})
            made += 1
    by_intent = {i: [r for r in rows if r["intent"] == i] for i in INTENTS}
    for first, second, follow_questions in FOLLOW_UPS:
        for _ in range(14):
            base = rng.choice(by_intent[first])
            follow = rng.choice(follow_questions)
            if rng.random() < 0.3:
                follow = follow.lower()
            key = normalise(base["messages"][0]["content"]) + " || " + normalise(follow)
            if key in seen:
                continue
            seen.add(key)
            item = rng.choice(ITEMS)
            rows.append({"messages": base["messages"] + [
                {"role": "user", "content": follow},
                {"role": "assistant", "content": answer(rng.choice(INTENTS[second][2]), item)}],
                "intent": first, "category": base["category"]})
    rng.shuffle(rows)
    return rows


def main() -> None:
    rows = build()
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    multi = sum(len(r["messages"]) > 2 for r in rows)
    print(f"wrote {len(rows)} conversations ({multi} multi-turn, {len(INTENTS)} intents) to {OUT}")


if __name__ == "__main__":
    main()
