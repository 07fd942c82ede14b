"""Class names of the fixed datasets, so ``num_classes`` is known before anything is downloaded."""

from __future__ import annotations

__all__ = [
    "ADE20K_CLASSES",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "FOOD101_CLASSES",
    "OXFORD_PETS_CLASSES",
    "VOC_CLASSES",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CIFAR100_CLASSES = """
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin
elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster
man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk
skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm
""".split()

# Oxford-IIIT Pet breeds in the order of their class ids (1..37) in annotations/list.txt.
OXFORD_PETS_CLASSES = [
    name.replace("_", " ")
    for name in """
Abyssinian American_Bulldog American_Pit_Bull_Terrier Basset_Hound Beagle Bengal Birman Bombay Boxer
British_Shorthair Chihuahua Egyptian_Mau English_Cocker_Spaniel English_Setter German_Shorthaired
Great_Pyrenees Havanese Japanese_Chin Keeshond Leonberger Maine_Coon Miniature_Pinscher Newfoundland Persian
Pomeranian Pug Ragdoll Russian_Blue Saint_Bernard Samoyed Scottish_Terrier Shiba_Inu Siamese Sphynx
Staffordshire_Bull_Terrier Wheaten_Terrier Yorkshire_Terrier
""".split()
]

# Food-101 classes as in meta/classes.txt (its folder names).
FOOD101_CLASSES = """
apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap bread_pudding
breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake ceviche cheese_plate cheesecake
chicken_curry chicken_quesadilla chicken_wings chocolate_cake chocolate_mousse churros clam_chowder
club_sandwich crab_cakes creme_brulee croque_madame cup_cakes deviled_eggs donuts dumplings edamame
eggs_benedict escargots falafel filet_mignon fish_and_chips foie_gras french_fries french_onion_soup
french_toast fried_calamari fried_rice frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich
grilled_salmon guacamole gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream
lasagna lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos omelette
onion_rings oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza pork_chop poutine prime_rib
pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa sashimi scallops seaweed_salad
shrimp_and_grits spaghetti_bolognese spaghetti_carbonara spring_rolls steak strawberry_shortcake sushi tacos
takoyaki tiramisu tuna_tartare waffles
""".split()

# Pascal VOC: index 0 is the background in segmentation masks; detection labels 1..20 skip it.
VOC_CLASSES = """
background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person
pottedplant sheep sofa train tvmonitor
""".split()

# ADE20K SceneParsing (ADEChallengeData2016) classes 1..150; mask value 0 ("other") is ignored.
ADE20K_CLASSES = [
    name.strip()
    for name in """
wall, building, sky, floor, tree, ceiling, road, bed, windowpane, grass, cabinet, sidewalk, person, earth,
door, table, mountain, plant, curtain, chair, car, water, painting, sofa, shelf, house, sea, mirror, rug,
field, armchair, seat, fence, desk, rock, wardrobe, lamp, bathtub, railing, cushion, base, box, column,
signboard, chest of drawers, counter, sand, sink, skyscraper, fireplace, refrigerator, grandstand, path,
stairs, runway, case, pool table, pillow, screen door, stairway, river, bridge, bookcase, blind,
coffee table, toilet, flower, book, hill, bench, countertop, stove, palm, kitchen island, computer,
swivel chair, boat, bar, arcade machine, hovel, bus, towel, light, truck, tower, chandelier, awning,
streetlight, booth, television receiver, airplane, dirt track, apparel, pole, land, bannister, escalator,
ottoman, bottle, buffet, poster, stage, van, ship, fountain, conveyer belt, canopy, washer, plaything,
swimming pool, stool, barrel, basket, waterfall, tent, bag, minibike, cradle, oven, ball, food, step, tank,
trade name, microwave, pot, animal, bicycle, lake, dishwasher, screen, blanket, sculpture, hood, sconce,
vase, traffic light, tray, ashcan, fan, pier, crt screen, plate, monitor, bulletin board, shower, radiator,
glass, clock, flag
""".replace("\n", " ").split(",")
]
