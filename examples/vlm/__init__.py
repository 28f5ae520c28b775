"""The vision-language worked example: a small model that reads two digits and says them."""
