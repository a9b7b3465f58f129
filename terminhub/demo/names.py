"""Static vocabulary of the demo directory: cities, specialties and German names.

Kept apart from the generator so that the data can be read (and corrected) without reading code.
"""

from __future__ import annotations

from dataclasses import dataclass

FACHGEBIET_SYSTEM = "https://fhir.kbv.de/CodeSystem/KBV_CS_SFHIR_BAS_FACHGEBIET_GROB"
BSNR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_BSNR"
ANR_SYSTEM = "https://fhir.kbv.de/NamingSystem/KBV_NS_Base_ANR"


@dataclass(frozen=True)
class City:
    """A city for practices: coordinates of its centre, some of its real postal codes and streets."""

    name: str
    lat: float
    lon: float
    postal_codes: tuple[str, ...]
    streets: tuple[str, ...]
    kv: str  # first two digits of a BSNR: the KV region (plausible, not verified against the KBV table)
    phone_prefix: str  # area code, or area code plus the start of a range reserved for fiction
    phone_digits: int  # digits drawn after phone_prefix


# Berlin, Hamburg, Frankfurt, Köln and München use the Bundesnetzagentur's "drama numbers" (1000 numbers
# per city reserved for media), so no demo practice shows the number of a real subscriber there.
DEMO_CITIES: tuple[City, ...] = (
    City("Berlin", 52.5200, 13.4050,
         ("10115", "10117", "10178", "10243", "10435", "10551", "10623", "10785", "10961", "12043", "12157"),
         ("Friedrichstraße", "Torstraße", "Kastanienallee", "Karl-Marx-Allee", "Schönhauser Allee",
          "Kantstraße", "Bergmannstraße", "Sonnenallee", "Turmstraße", "Schloßstraße"),
         "72", "+49 30 23125", 3),
    City("Hamburg", 53.5511, 9.9937,
         ("20095", "20144", "20249", "20354", "20357", "21073", "22041", "22083", "22301", "22765"),
         ("Mönckebergstraße", "Eppendorfer Landstraße", "Grindelallee", "Osterstraße", "Mühlenkamp",
          "Ottenser Hauptstraße", "Wandsbeker Marktstraße", "Lange Reihe"),
         "02", "+49 40 66969", 3),
    City("München", 48.1374, 11.5755,
         ("80331", "80333", "80469", "80539", "80636", "80797", "80801", "81369", "81541", "81667"),
         ("Leopoldstraße", "Sendlinger Straße", "Rosenheimer Straße", "Nymphenburger Straße",
          "Schleißheimer Straße", "Lindwurmstraße", "Wörthstraße", "Fraunhoferstraße"),
         "71", "+49 89 99998", 3),
    City("Köln", 50.9375, 6.9603,
         ("50667", "50672", "50674", "50676", "50733", "50823", "50937", "50968", "51063", "51103"),
         ("Hohe Straße", "Aachener Straße", "Venloer Straße", "Zülpicher Straße", "Neusser Straße",
          "Severinstraße", "Dürener Straße", "Bonner Straße"),
         "38", "+49 221 4710", 3),
    City("Frankfurt am Main", 50.1109, 8.6821,
         ("60311", "60313", "60316", "60318", "60322", "60385", "60431", "60487", "60594", "65929"),
         ("Zeil", "Berger Straße", "Schweizer Straße", "Leipziger Straße", "Eschersheimer Landstraße",
          "Oeder Weg", "Mainzer Landstraße", "Königsteiner Straße"),
         "46", "+49 69 90009", 3),
    City("Stuttgart", 48.7758, 9.1829,
         ("70173", "70174", "70176", "70178", "70182", "70190", "70199", "70372", "70469", "70597"),
         ("Königstraße", "Eberhardstraße", "Hauptstätter Straße", "Rotebühlstraße", "Olgastraße",
          "Marktstraße", "Böblinger Straße", "Neckarstraße"),
         "52", "+49 711 ", 7),
    City("Leipzig", 51.3397, 12.3731,
         ("04103", "04105", "04107", "04109", "04155", "04177", "04229", "04275", "04315", "04317"),
         ("Karl-Liebknecht-Straße", "Georg-Schwarz-Straße", "Eisenbahnstraße", "Gohliser Straße",
          "Könneritzstraße", "Petersstraße", "Jahnallee", "Prager Straße"),
         "98", "+49 341 ", 7),
    City("Dresden", 51.0504, 13.7373,
         ("01067", "01069", "01097", "01099", "01127", "01139", "01187", "01219", "01277", "01307"),
         ("Prager Straße", "Königsbrücker Straße", "Louisenstraße", "Bautzner Straße", "Schandauer Straße",
          "Chemnitzer Straße", "Bergstraße", "Leipziger Straße"),
         "98", "+49 351 ", 7),
    City("Düsseldorf", 51.2277, 6.7735,
         ("40210", "40211", "40212", "40213", "40215", "40219", "40223", "40225", "40233", "40477"),
         ("Königsallee", "Schadowstraße", "Nordstraße", "Lorettostraße", "Bilker Allee", "Ackerstraße",
          "Kölner Straße", "Graf-Adolf-Straße"),
         "38", "+49 211 ", 7),
    City("Nürnberg", 49.4521, 11.0767,
         ("90402", "90403", "90408", "90419", "90429", "90443", "90459", "90478", "90489"),
         ("Königstraße", "Pirckheimerstraße", "Fürther Straße", "Allersberger Straße", "Bucher Straße",
          "Gibitzenhofstraße", "Äußere Sulzbacher Straße"),
         "71", "+49 911 ", 7),
)
# How often a practice lies in each city (roughly by population).
CITY_WEIGHTS: tuple[int, ...] = (10, 6, 5, 4, 3, 3, 3, 3, 3, 2)


@dataclass(frozen=True)
class Fachgebiet:
    """A coarse specialty (KBV "Fachgebiet grob") and what a practice of it calls its offers."""

    code: str
    display: str
    label: str  # how a practice names its field: "Praxis Dr. med. … – {label}"
    service: str  # HealthcareService.name
    schedule_names: tuple[str, ...]  # Terminprofil names to choose from
    slot_minutes: tuple[int, ...]  # default slot lengths to choose from
    weight: int  # how common such a practice is


# 09 (with the display KBV's own TVS example uses) and 26 are confirmed by ../reference/116117.md, 05 and 09
# by the contract (section 4.1), 01 by the project brief. 03, 06 and 08 follow the code list's apparent
# alphabetical order and are NOT confirmed: check them against S_BAS_FACHGEBIET_GROB (applications.kbv.de).
FACHGEBIETE: tuple[Fachgebiet, ...] = (
    Fachgebiet("01", "Allgemeinmedizin", "Allgemeinmedizin", "Hausärztliche Versorgung",
               ("Hausärztliche Sprechstunde", "Akutsprechstunde", "Gesundheits-Check-up"), (10, 15), 12),
    Fachgebiet("05", "Frauenheilkunde und Geburtshilfe", "Frauenheilkunde", "Gynäkologische Versorgung",
               ("Gynäkologische Sprechstunde", "Krebsfrüherkennung", "Schwangerenvorsorge"), (15, 20), 5),
    Fachgebiet("09", "Kinderarzt / Kinderärztin", "Kinder- und Jugendmedizin", "Kinderärztliche Versorgung",
               ("Kinderärztliche Sprechstunde", "U-Untersuchung", "Impfsprechstunde"), (15, 20), 5),
    Fachgebiet("26", "Chirurgie und Orthopädie", "Orthopädie und Unfallchirurgie", "Orthopädische Versorgung",
               ("Orthopädische Sprechstunde", "Chirurgische Sprechstunde"), (15, 20), 4),
    Fachgebiet("03", "Augenheilkunde", "Augenheilkunde", "Augenärztliche Versorgung",
               ("Augenärztliche Sprechstunde", "Sehtest und Augendruckmessung"), (10, 15), 3),
    Fachgebiet("06", "Hals-Nasen-Ohrenheilkunde", "Hals-Nasen-Ohrenheilkunde", "HNO-ärztliche Versorgung",
               ("HNO-Sprechstunde", "Hörtest"), (10, 15), 3),
    Fachgebiet("08", "Innere Medizin", "Innere Medizin", "Fachinternistische Versorgung",
               ("Internistische Sprechstunde", "Ultraschalluntersuchung"), (15, 20), 3),
)

GIVEN_FEMALE: tuple[str, ...] = (
    "Anna", "Julia", "Katharina", "Sabine", "Claudia", "Stefanie", "Laura", "Lena", "Miriam", "Johanna",
    "Andrea", "Birgit", "Christina", "Eva", "Franziska", "Hanna", "Ines", "Jana", "Kerstin", "Nadine",
    "Petra", "Sophie", "Ulrike", "Susanne",
)
GIVEN_MALE: tuple[str, ...] = (
    "Thomas", "Michael", "Andreas", "Stefan", "Christian", "Markus", "Jan", "Tobias", "Florian", "Sebastian",
    "Alexander", "Matthias", "Daniel", "Frank", "Jörg", "Klaus", "Lukas", "Martin", "Peter", "Ralf",
    "Uwe", "Wolfgang", "Felix", "Jens",
)
FAMILY: tuple[str, ...] = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
    "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann",
    "Braun", "Krüger", "Hofmann", "Hartmann", "Lange", "Schmitt", "Werner", "Krause", "Meier", "Lehmann",
    "Schmid", "Schulze", "Maier", "Köhler", "Herrmann", "König", "Walter", "Mayer", "Huber", "Kaiser",
    "Fuchs", "Peters", "Lang", "Scholz", "Möller", "Weiß", "Jung", "Hahn", "Vogel", "Friedrich",
    "Keller", "Günther", "Frank", "Berger", "Winkler", "Roth", "Beck", "Lorenz", "Baumann", "Franke",
    "Albrecht", "Schuster", "Simon", "Ludwig", "Böhm", "Winter", "Kraus", "Martin", "Schumacher", "Krämer",
    "Vogt", "Stein", "Jäger", "Otto", "Sommer", "Groß", "Seidel", "Heinrich", "Brandt", "Haas",
    "Yılmaz", "Nowak", "Kowalski", "Popescu", "Nguyen", "Haddad",
)
