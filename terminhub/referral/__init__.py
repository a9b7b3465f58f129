"""116117 referral codes (Vermittlungscodes): alphabet, generation, urgency windows and lifecycle."""
