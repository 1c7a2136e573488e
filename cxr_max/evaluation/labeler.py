"""Rule-based CheXpert-style label extraction from free-text chest X-ray reports and teacher answers.

In the spirit of the CheXpert labeler (Irvin et al., 2019), without its Java parser:

1. **Text.** Sections that describe the *request* rather than the image (INDICATION, HISTORY,
   COMPARISON, TECHNIQUE, EXAMINATION, ...; a header is a line that starts with capitals and a colon)
   are dropped. ``<think>``-style tags are replaced by a sentence break, so a teacher completion
   ``"<think> reasoning </think>The disease of this patient is X."`` is labelled as a whole. A refusal
   ("As an AI, I cannot provide a diagnosis ...", see :func:`cxr_max.trajectories.parse.is_refusal`)
   gives every label ``None``. The text is lower-cased.
2. **Clauses.** The text is cut into clauses at ``.`` (not in decimals or "vs."), ``;``, ``:``, blank
   lines and the words "but", "however", "although", "though", "whereas", "except", "other than",
   "aside from", "apart from", "which", "there is/are/has been/...". Negation and uncertainty cues act
   only inside their own clause. Inside a clause a pre-mention negation ("no", "without", "without
   evidence of", ...) reaches across a comma-separated list ("no effusion, pneumothorax, focal
   consolidation") but stops at a comma that starts a new assertion (", small", ", possible",
   ", left", ", this", ...: "without comparison, this may represent infection" is a hedge, not a
   negation). In a coordinated *or* list ("no focal consolidation, suspicious opacity, large
   effusion, or pneumothorax is identified", the "or"/"nor" before or after the mention) size and
   descriptor words do not end it; only a strong assertion does (", there", ", possible", ", new",
   ", stable", ", left", ...).
3. **Mentions.** Each label has a compiled regular expression of phrases (see ``_MENTIONS``; e.g.
   "enlarged cardiac silhouette" for Cardiomegaly, "blunting of the costophrenic angle" for Pleural
   Effusion, "pulmonary vascular congestion"/"engorged vessels" for Edema, "ET tube"/"PICC"/"sternotomy
   wires" for Support Devices), in the spirit of the CheXpert labeler's phrase lists ("volume loss" is
   not atelectasis; extrapulmonary masses and bone or skin lesions are not lung lesions;
   "granulomatous", "tuberculous" or "histoplasmosis" infection is not pneumonia; "apical scarring" is a
   lung scar, Lung Opacity, and only pleural thickening or a pleural scar is Pleural Other; "infection",
   "infectious process" are Pneumonia and "nodular opacity/density" is Lung Lesion, as in the CheXpert
   labeler's lists). A nodule the same clause explains as something outside the lung (a pseudonodule:
   "... represents a healing rib fracture", "... likely nipple shadow", "... felt to represent
   confluence of overlapping vessels", "... secondary to summation") is a negative Lung Lesion mention
   (the density itself stays a Lung Opacity mention); a granuloma is not explained away. Heart size and
   mediastinal contour phrases are *attribute* mentions decided by their nearest size qualifier in the
   same comma-separated part (after the mention first, then before it): normal ("normal",
   "unremarkable", "within normal limits", "not significantly enlarged", "at the upper limits of
   normal", "top normal": the CheXpert negation rules read the upper limit of normal as normal) ->
   negative; "borderline" -> uncertain; abnormal ("enlarged", "widened", "prominent") -> the mention's
   status (positive, or hedged: "the heart may be enlarged"); "stable"/"unchanged" alone or no qualifier
   -> not a mention.
4. **Status of a mention**, checked in this order: (a) negated uncertainty ("cannot be excluded", "not
   ruled out", "cannot exclude") and limited visibility ("not well seen", "poorly evaluated") ->
   uncertain; (b) negation before the mention ("no", "not", "without", "free of", "negative for", "no
   evidence of", "absence of", "resolution of", "removal of", "clear of", ...) or after it ("is not
   seen", "has resolved", "was removed", "are absent", and normal-limit phrases: "appear within limits
   of normal", "is unremarkable", "is normal"); a post-mention phrase reaches the mention directly (no
   comma, at most 40 characters) or across a coordinated subject with a plural verb ("consolidation,
   atelectasis, and effusion have cleared", "heart size and vascular engorgement appear within normal
   limits") or past a "seen on the prior CT" modifier ("the pneumonia seen on the CT of <date>, <date>
   is not seen on this radiograph") -> negative; (c) uncertainty before ("possible", "may", "likely",
   "suggest", "concerning for", "questionable", "versus", "favor", "correlate clinically for",
   "differential diagnosis", ...) or after ("is suspected", "may also be present", "versus", "?") ->
   uncertain; otherwise positive. An affirmative "A or B" ("left base atelectasis or scarring") is read
   as stating both, unlike the CheXpert labeler's "XXX or YYY" uncertainty rule: on IU-Xray's
   development half that rule lowered Atelectasis F1 from 0.95 to 0.82 (uncertain as negative), since
   the radiologists' own tags keep "atelectasis or scarring" as atelectasis. Pseudo-negations ("no
   change in", "no interval change", "not significantly changed", "no increase in", "not only") are not
   negations; "age-indeterminate" dates a finding and does not hedge it.
5. **Aggregation per label** (as CheXpert): positive beats uncertain beats negative beats not
   mentioned. **No Finding** is 1 when the text says something (is not empty), no label other than
   Support Devices is positive or uncertain, and no other abnormality is stated (``_OTHER_FINDINGS``,
   in the spirit of the CheXpert labeler's "no finding" phrase list: emphysema, hyperinflation, low
   lung volumes, degenerative changes, scoliosis, calcified granuloma, tortuous aorta, hernia,
   adenopathy, scarring, ...); otherwise it is None.
6. **Laterality** (Pleural Effusion, Pneumothorax, Consolidation, Atelectasis), from positive or
   uncertain mentions only: the side words just before the mention in its clause ("left", "right",
   "bilateral", "both", "bibasilar", "RLL", "lingula", "left greater than right" ...) or just after it
   ("effusion on the left", "effusions, left greater than right", "... bilaterally"); a mention that
   names no side takes it from the sided opacity it explains ("left lower lobe opacity, atelectasis
   versus consolidation") or the finding it is "adjacent to" ("left effusion and adjacent
   atelectasis"). When different mentions of one finding name different single sides (left in one,
   right in another, none says bilateral) the laterality is ``"bilateral"`` (the union) and the
   finding is listed in :attr:`LabelResult.laterality_conflict`: in a radiology report that usually
   means both sides, in a teacher trajectory it usually means the reasoning and the answer disagree.

The rules are checked on hand-written sentences (``tests/test_labeler.py``,
``tests/data/labeler_regression.jsonl``) and measured on IU-Xray reports against their MeSH tags,
side by side with a keyword + negation baseline, on a development half (odd report numbers, the only
half the rules were developed on) and a held-out half (``benchmarks/bench_labeler.py``).

Values are floats as in the MIMIC-CXR CheXpert CSV: 1.0 positive, 0.0 negative, -1.0 uncertain,
``None`` not mentioned. All regular expressions are compiled once, at import.

Speed: every rule above looks only inside one clause, so the findings of a clause are computed once
per distinct clause text and cached (:func:`_clause_findings`, an LRU cache of 131,072 clauses;
reports and teacher completions repeat clauses heavily); a clause that matches none of the mention
patterns (one combined regex) is skipped. :func:`label_reports_full` labels each distinct text once.
The results are the same as labelling the whole text mention by mention
(``tests/test_eval_labeler_fast.py`` checks this against a plain whole-text implementation).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

from cxr_max.errors import DataError
from cxr_max.labels import CHEXPERT_LABELS, LATERAL_FINDINGS, NEGATIVE, POSITIVE, UNCERTAIN
from cxr_max.trajectories.parse import is_refusal

__all__ = [
    "LabelResult",
    "clause_statuses",
    "clauses",
    "label_report",
    "label_report_full",
    "label_reports",
    "label_reports_full",
    "labels_to_arrow",
    "laterality_to_arrow",
    "mentions",
    "report_body",
]

_F = re.IGNORECASE


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, _F)


# --------------------------------------------------------------------------------------------------
# 1. Text preparation
# --------------------------------------------------------------------------------------------------

# Sections that describe why the image was taken, not what it shows.
_SKIP_SECTIONS = frozenset(
    {
        "indication", "indications", "clinical indication", "history", "clinical history",
        "clinical information", "reason for exam", "reason for examination", "reason for study",
        "comparison", "comparisons", "technique", "examination", "exam", "procedure", "type of exam",
        "type of examination", "notification", "referring physician", "clinical question", "prior",
        # further request headers and misspellings seen in MIMIC-CXR (as in cxr_max.mimic.reports)
        "patient history", "clinical data", "medical history", "pfi", "reference exam", "comparison exam",
        "comparison film", "comparison study", "comparison studies", "comparision", "comparsion", "comparrison",
        "comparisions", "idication", "ndication", "indicaton", "indicatin", "reason for the examination", "examinations", "study",
    }
)
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Za-z /&()\-]{1,40}?)[ \t]*:", re.MULTILINE)
_TAGS = _rx(r"</?\s*(?:think|thinking|reasoning|thought|answer)\s*>")


def report_body(text: str) -> str:
    """The part of a report that describes the image: every section except INDICATION, HISTORY,
    COMPARISON, TECHNIQUE, EXAMINATION and the like. Text with no recognised header is returned whole.

    A header is a line starting with a word in capitals (or a known section name in any case)
    followed by a colon, as in MIMIC-CXR and IU-Xray reports.
    """
    headers = [m for m in _HEADER.finditer(text) if m.group(1).isupper() or m.group(1).lower() in _SKIP_SECTIONS]
    if not headers:
        return text
    keep = [text[: headers[0].start()]]
    for i, m in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        if m.group(1).strip().lower() not in _SKIP_SECTIONS:
            keep.append(text[m.end() : end])
    return "\n\n".join(keep)


# --------------------------------------------------------------------------------------------------
# 2. Clause boundaries
# --------------------------------------------------------------------------------------------------

# (The "vs." / "dr." look-behinds come after the period so that they run only at periods: faster.)
_BOUNDARY = re.compile(
    r"\.(?<!\bvs\.)(?<!\bdr\.)(?!\d)|[;:!]|\n[ \t]*\n|"
    r"\b(?:but|however|although|though|whereas|except|other than|aside from|apart from|which|"
    r"there (?:is|are|has been|have been|was|were|may be|might be))\b"
)

# A comma followed by one of these words starts a new assertion and ends a negation's list scope.
_NEW_ASSERTION = _rx(
    r",\s*(?:(?:and|with)\s+)?(?:small|moderate|large|mild|mildly|moderately|severe|new|persistent|"
    r"increased|increasing|decreased|decreasing|stable|unchanged|there|the|a|an|minimal|trace|slight|"
    r"tiny|known|worsening|worsened|improving|improved|residual|left|right|bilateral|bibasilar|"
    r"possible|possibly|probable|probably|likely|may|might|could|suspected|presumed|questionable|"
    r"concerning|suggestive|consistent|compatible|some|subtle|small-to-moderate|moderate-to-large|healed|healing|"
    r"old|chronic|remote|subacute|"
    r"low|lower|upper|patchy|streaky|linear|plate-like|platelike|hazy|dense|multifocal|"
    r"diffuse|extensive|retrocardiac|basilar|bibasal|apical|loculated|layering|vascular|pulmonary|"
    r"this|these|those|it|they)\b"
)

# Inside a coordinated "or" list ("no focal consolidation, suspicious opacity, large effusion, or
# pneumothorax") a size or descriptor word after a comma does not end the negation; these still do.
_STRONG_ASSERTION = _rx(
    r",\s*(?:(?:and|with)\s+)?(?:there|the|which|possible|possibly|probable|probably|likely|may|might|could|"
    r"suspected|presumed|questionable|concerning|suggestive|consistent|compatible|new|persistent|stable|"
    r"unchanged|increased|increasing|decreased|decreasing|known|worsening|worsened|improving|improved|"
    r"residual|again|now|also|seen|noted|is|are|was|were|this|these|those|it|they)\b"
)
_OR_LIST = _rx(r"(?:,\s*|\s)(?:or|nor|and/or)\s")

# --------------------------------------------------------------------------------------------------
# 3. Mention lexicon
# --------------------------------------------------------------------------------------------------

_MENTIONS: dict[str, str] = {
    "Atelectasis": r"atelecta\w*|\bcollapsed?\b(?! of the vertebra)|"
    r"\b(?:sub)?segmental (?:atelecta\w*|collapse)",
    "Cardiomegaly": r"cardiomegaly|cardiac enlargement|enlarge(?:d|ment of the) (?:heart|cardiac silhouette|"
    r"cardiac shadow|cardiac contour)|enlarged cardiac (?:silhouette|shadow|contour|size)|"
    r"(?:large|enlarged|big) heart|cardiac hypertrophy",
    "Consolidation": r"consolidat\w*",
    "Edema": r"(?<!soft tissue )(?<!subcutaneous )(?<!pedal )(?<!extremity )\bo?edema\b|edematous|"
    r"(?:pulmonary |vascular |venous |interstitial )+congestion|\bcongestive (?:heart )?failure|\bchf\b|"
    r"vascular engorgement|cephali[sz]ation|kerley b|fluid overload|(?:heart|cardiac) failure|"
    r"volume overload|vascular (?:prominence|redistribution|plethora|indistinctness)|indistinctness|"
    r"(?:vessels|vasculature|vascularity|vascular markings) (?:(?:are|is|appear|appears|remain) )?(?:(?!not\b)\w+ )?"
    r"(?:engorged|indistinct|congested)|engorged (?:pulmonary )?(?:vessels|vasculature)",
    "Enlarged Cardiomediastinum": r"enlarged cardiomediastin\w*|cardiomediastinal enlargement|"
    r"widen(?:ed|ing) (?:of the )?(?:superior )?mediastin\w*|mediastinal (?:widening|enlargement)|"
    r"enlarged mediastin\w*|mediastinal mass|enlarged hila|hilar (?:enlargement|prominence|adenopathy|"
    r"lymphadenopathy)|mediastinal (?:lymphadenopathy|adenopathy)|pneumomediastinum",
    "Fracture": r"fractur\w*|\bfx\b",
    "Lung Lesion": r"nodul\w*|fibronodular|micronodul\w*|(?<!thyroid )(?<!breast )(?<!chest wall )(?<!soft tissue )"
    r"(?<!pericardial )(?<!mediastinal )(?<!abdominal )\bmass(?:es|-like)?\b(?! effect)|"
    r"(?:lung|pulmonary|parenchymal|mass|cavitary|spiculated|cavitating|apical|hilar|perihilar) lesions?\b|"
    r"tumou?r|neoplas\w*|carcinoma|\blump\b|cavitary (?:lesion|opacity)|lung cancer",
    "Lung Opacity": r"opaci\w*|air[ -]?space (?:disease|process)|infiltrat\w*|decreased translucency|"
    r"increased (?:density|densities|attenuation)|\bdensit(?:y|ies)\b|interstitial (?:marking|pattern|"
    r"prominence|abnormalit|lung disease|disease|thickening|process)\w*|reticula(?:r|tion)\w*|"
    r"(?:parenchymal|pulmonary|lung|(?:bi-?)?apical) scar\w*|peribronchial (?:thickening|cuffing)|haziness|"
    r"ground[ -]glass|bronchiectasis|fibrosis|fibrotic",
    "Pleural Effusion": r"(?<!pericardial )(?<!joint )(?<!pericardial and pleural )effusions?\b|"
    r"pleural fluid|hydrothora\w*|blunt(?:ed|ing) (?:of )?(?:the )?(?:left |right |bilateral |both )?"
    r"(?:costophrenic|cp|costodiaphragmatic)|(?:costophrenic|cp) (?:angle |sulcus |sulci )?blunting|"
    r"layering fluid|fluid (?:in|within|tracking along) the (?:pleural|fissure|minor fissure|major fissure)|"
    r"meniscus sign",
    "Pleural Other": r"pleural (?:thickening|plaques?|calcification\w*|scar\w*|abnormalit\w*|"
    r"based (?:opacity|density|mass|lesion)|reaction|irregularity)|fibrothorax|apical (?:pleural )?"
    r"cap(?:ping|s)?\b|pleuroparenchymal (?:scar\w*|thickening|opacit\w*)|mesothelioma|"
    r"fissur\w* thickening|thickening (?:of|in|along) the (?:\w+ )?fissures?|thickening of the pleura|"
    r"pleural[- ]\w+ scar\w*|(?:bi)?apical (?:pleural )?thickening|(?:bi)?apical pleural scar\w*",
    "Pneumonia": r"pneumonias?\b|bronchopneumonia|pneumonitis|(?<!granulomatous )(?<!histoplasmosis )(?<!tuberculosis )"
    r"(?<!tuberculous )(?<!mycobacterial )(?<!\btb )infectio\w*|\bpna\b",
    "Pneumothorax": r"pneumothora\w*|\bptx\b|hydropneumothora\w*|(?:air|gas) in the pleural space",
    "Support Devices": r"(?:endotracheal|\bet|\bett|\bng|\bog|nasogastric|orogastric|enteric|feeding|"
    r"dobhoff|chest|tracheostomy|trach|gastrostomy|\bg-|\bj-|nasojejunal|drainage|pleural|mediastinal|"
    r"thoracostomy|esophageal|temperature)[ -]?(?:tubes?|catheters?|drains?|probe)|\bett\b|\bpiccs?\b|"
    r"(?:central|venous|arterial|midline|hemodialysis|dialysis|swan[ -]ganz|pulmonary artery|"
    r"(?:internal )?jugular|\bij|subclavian|femoral|port)[ -]?(?:venous )?(?:lines?|catheters?|"
    r"cath)\b|swan[ -]ganz|pacemakers?|\bpacer\b|pacing (?:wires?|leads?)|defibrillator|\baicds?\b|"
    r"\bicds?\b|(?:sternotomy|sternal|cerclage) wires?|median sternotomy|sternotomy|port-a-cath|"
    r"\bport\b|tracheostomy|\btrach\b|\blvad\b|ventricular assist device|intra-?aortic balloon|"
    r"\biabp\b|(?:valve|mitral|aortic) (?:replacement|prosthesis)|prosthetic valve|\bstents?\b|"
    r"surgical clips|\bclips?\b|\bleads?\b|\bhardware\b|\bpigtail\b|catheters?|\bdrains?\b|"
    r"\bcabg\b|loop recorder|\bimpella\b|\becmo\b|\blines (?:and|or|/) tubes\b|\btubes (?:and|or|/) lines\b|"
    r"monitoring (?:leads|devices)|support devices",
}
# Every phrase starts at a word start; the leading \b lets the engine skip other positions fast.
# The text is lower-cased before matching, so these are compiled case-sensitive (much faster in re).
_MENTION_RX: dict[str, re.Pattern[str]] = {name: re.compile(r"\b(?:" + p + ")") for name, p in _MENTIONS.items()}

# Abnormalities outside the 13 findings (in the spirit of the CheXpert labeler's "no finding" phrase
# list): a positive or uncertain mention of one of these makes No Finding None, as a finding does.
OTHER_FINDING = "Other Finding"
_OTHER_FINDINGS = re.compile(
    r"\b(?:emphysema\w*|hyperinfla\w*|hyperexpan\w*|hyperlucen\w*|overinfla\w*|hyperaera\w*|"
    r"(?:low|decreased|diminished) lung volumes?|hypoinfla\w*|volume loss|copd|chronic obstructive|"
    r"bronchitis|bronchiolitis|airways? disease|bronchospasm|asthma|bullae?|bullous|"
    r"scolio\w*|kyphos\w*|kyphotic|degenerat\w*|spondylo\w*|osteophyt\w*|osteopeni\w*|demineraliz\w*|"
    r"deformit\w*|compression (?:deformity|fracture)|"
    r"calcifi\w*|granulom\w*|atheroscl\w*|tortuo\w*|ectasia|ectatic|aneurysm\w*|unfold\w*|"
    r"(?:hemi)?diaphragm\w* (?:is |are )?(?:\w+ )?(?:elevat\w*|flatten\w*)|elevat\w* (?:of the )?(?:left |right )?"
    r"(?:hemi)?diaphragm|flatten\w* (?:of the )?(?:hemi)?diaphragm\w*|eventration|hernia\w*|"
    r"pneumoperitoneum|free air|pneumomediastinum|subcutaneous (?:emphysema|air|gas)|"
    r"hematoma|hemorrhage|contusion|foreign bod\w*|bullet|shrapnel|"
    r"pulmonary (?:arterial )?hypertension|cuffing|cephali[sz]ation|thoracentesis|"
    r"(?:post-?surgical|postoperative|post-operative) change\w*|mastectomy|lobectomy|pneumonectomy|"
    r"(?:lung|pulmonary|parenchymal) scar\w*|\bscar(?:s|ring)?\b|cyst\w*|cavit\w*|"
    r"lymphadenopathy|adenopathy|sarcoid\w*|tuberculo\w*|histoplasm\w*|mycobacteri\w*|\btb\b|\blesions?\b|malignan\w*|metasta\w*|cancer|"
    r"aspiration)"
)
# Attribute mentions: a subject phrase whose status depends on its qualifier in the same clause.
_HEART = re.compile(
    r"\b(?:(?:heart|cardiac) (?:size|silhouette|shadow|contours?|dimensions?)|\bheart\b(?! failure| rate)|"
    r"cardiac (?:silhouette|size))"
)
_MEDIASTINUM = re.compile(
    r"\b(?:cardio-?mediastinal (?:silhouette|contours?|size|width|shadow)|mediastinal (?:silhouette|contours?|"
    r"width|size|structures|shadow)|\bmediastinum\b|hilar contours?|\bhila\b|cardiomediastinum|"
    r"cardiac and mediastinal (?:silhouettes?|contours?)|heart and mediastinum)"
)
# The qualifier of an attribute mention, nearest first: after the mention ("heart size is normal"), then
# before it ("normal heart size"). Normal-limit phrases come first so that "not significantly enlarged"
# and "upper limits of normal" read as normal (as the CheXpert labeler's negation rules do); "borderline"
# is uncertain; "stable"/"unchanged"/"similar" say nothing about size and are skipped.
_QUALIFIER = _rx(
    r"\b(?P<normal>normal|unremarkable|within (?:the )?(?:normal limits|limits of normal)|"
    r"not (?:be )?(?:significantly |substantially |markedly |particularly |definitely |appreciably )?"
    r"(?:enlarged|widened|prominent|increased)|no (?:longer )?(?:enlarged|widened)|small)\b|"
    r"\b(?P<borderline>borderline)\b|"
    r"\b(?P<abnormal>enlarg\w*|increas\w*|large|larger|widen\w*|wide|prominen\w*|big|dilat\w*)\b|"
    r"\b(?P<silent>stable|unchanged|similar)\b"
)
_ATTR_CUT_PRE = _rx(r",|;|\band\b|\bwith\b|\bwithout\b")

# --------------------------------------------------------------------------------------------------
# 4. Negation and uncertainty cues
# --------------------------------------------------------------------------------------------------

# Negated uncertainty: checked first, anywhere in the clause.
_NEG_UNCERTAIN = _rx(
    r"cannot (?:be )?(?:entirely |completely |totally |definitely |definitively |fully |confidently )?(?:excluded|ruled out)|"
    r"can ?not (?:entirely |completely |totally )?(?:exclude|rule out)|can't (?:exclude|rule out|be excluded)|"
    r"not (?:be )?(?:entirely |completely |totally |definitely |fully )?(?:excluded|ruled out)|"
    r"(?:difficult|hard|unable) to (?:exclude|rule out)|could not be (?:excluded|ruled out)|"
    r"may not be excluded|not (?:entirely )?(?:certain|sure)|no definite evidence against|"
    r"(?:is|are) not (?:clearly )?(?:seen|visualized) (?:but|although)|"
    r"not (?:well|clearly|as well)[ -](?:seen|visuali[sz]ed|evaluated|demonstrated)|"
    r"poorly (?:seen|visuali[sz]ed|evaluated)|incompletely (?:seen|visuali[sz]ed|evaluated)"
)

# Pseudo-negations: "no change in X", "not significantly changed" are statements about a present X.
_PSEUDO = (
    r"(?:significant|substantial|appreciable|interval|definite|marked|major|other|new)?\s*"
    r"(?:change|changed|increase|increased|decrease|decreased|improvement|improved|worsening|worsened|"
    r"progression|enlargement|difference|evolution)"
)
_PRE_NEG = _rx(
    r"\b(?:no(?!\s+" + _PSEUDO + r"\b)|not(?!\s+(?:only|" + _PSEUDO + r"\b))|without(?!\s+" + _PSEUDO + r"\b)|"
    r"neither|nor|free of|negative for|absence of|absent|resolution of|resolved|removal of|removed|"
    r"history of|disappearance of|rather than|"
    r"clear of|clearing of|rules? out|ruled out|exclude[ds]?|excluding|never|denies)\b"
)
# Negation after the mention: a verb phrase that denies it ("is not seen", "has resolved", "was removed",
# "are absent") or says it is normal ("appear within limits of normal", "is unremarkable"). It reaches
# the mention directly (at most 40 characters, no comma: "pneumothorax is not seen") or across a
# coordinated list with a plural verb ("consolidation, atelectasis, and blunting have cleared").
_POST_NEG_VERB = _rx(
    r"\b(?:(?:(?:is|are|was|were|has|have|been|be)\s+)*)(?:not|no longer)\s+(?:\w+\s+)?"
    r"(?:seen|identified|present|evident|appreciated|visualized|visualised|demonstrated|noted|detected|"
    r"visible|apparent|shown|observed|found|recognized|definitely seen)\b|"
    r"\b(?:has|have|had)?\s*(?:\w+\s+)?(?:resolved|cleared|disappeared|been removed|been withdrawn)\b|"
    r"\b(?:is|are|was|were)\s+(?:now\s+)?(?:absent|removed|resolved|gone|withdrawn)\b|"
    r"^\s*(?:removed|resolved|absent)\b|"
    r"\b(?P<v4>is|are|appears?|remains?|seems?|looks?)\s+(?:now\s+|otherwise\s+|again\s+|grossly\s+|essentially\s+|"
    r"overall\s+|stable\s+and\s+)?(?:normal|unremarkable|within\s+(?:the\s+)?(?:normal\s+limits|limits\s+of\s+normal))\b|"
    r"^\s*(?:(?:is|are)\s+)?within\s+(?:the\s+)?(?:normal\s+limits|limits\s+of\s+normal)\b"
)
# A mention modified by where it was seen before ("the nodule seen on the prior ct ..."): a post-mention
# negation after that modifier still refers to the mention, even across its commas.
_SEEN_BEFORE = _rx(
    r"\s*(?:(?:in|at|within|of|over)\s+(?:the\s+)?(?:[\w-]+\s+){0,3}?)?(?:(?:previously|recently|initially|formerly)\s+)?(?:seen|noted|described|demonstrated|identified|"
    r"visuali[sz]ed|shown|reported|detected)\s+(?:on|in|at|by)\b"
)
_PLURAL_VERB = _rx(r"\s*(?:are|were|have|appear|remain|seem|look)\b")
_LIST_AND_OR = _rx(r"\b(?:and|or|nor)\b")
_LIST_BREAKERS = _rx(
    r"\b(?:lungs?|there|otherwise|which|with|without|is|are|was|were|has|have|appears?|shows?|measur\w*)\b|[;:]"
)


def _negated_after(post: str) -> bool:
    """True when a post-mention negation or normal-limit phrase in ``post`` (the clause after the
    mention) refers to the mention."""
    m = _POST_NEG_VERB.search(post, 0, 200)
    if m is None:
        return False
    between = post[: m.start()]
    if len(between) <= 40 and "," not in between:
        # "atelectasis and heart size is normal": a singular normal-limit verb after another subject
        return not (m.group("v4") and _LIST_AND_OR.search(between))
    if len(between) <= 150 and _SEEN_BEFORE.match(between) and _LIST_AND_OR.search(between) is None:
        # "the pneumonia seen on the ct of <date>, <date> is not seen on this radiograph"
        return True
    # a coordinated subject: "A, B, and C have cleared", "A and B appear within normal limits"
    verb = post[m.start() : m.end()]
    return (
        len(between) <= 150
        and _LIST_AND_OR.search(between) is not None
        and _STRONG_ASSERTION.search(between) is None
        and _LIST_BREAKERS.search(between) is None
        and _PLURAL_VERB.match(verb) is not None
    )


_PRE_UNC = _rx(
    r"\b(?:possibl[ey]|probabl[ey]|likely|unlikely|may|might|could|perhaps|suspect\w*|suspicious|"
    r"concern(?:ing)? (?:for|of)|suggest\w*|question(?:able)?|questioned|presum\w*|potential\w*|"
    r"equivocal|(?<!age-)(?<!age )indeterminate|uncertain|versus|vs\.?|differential|consider\w*|cannot be distinguished|"
    r"may represent|could represent|worrisome|atypical|early|developing|evolving|"
    r"not (?:clearly|entirely|definitely) (?:excluded|separate)|borderline|apparent|suggestion of|"
    r"compatible with|in the appropriate clinical setting|r/o|rule out|evaluat\w+ for|assess\w* for|maybe|"
    r"favou?r\w*|correlat\w* (?:clinically )?(?:for|with)|clinical correlation (?:for|with)|possibility (?:of|for)|"
    r"differential diagnos\w*)\b|\?"
)
_POST_UNC = _rx(
    r"^[^,.]{0,50}?\b(?:(?:is|are|was|were|be|seems?|appears?)\s+(?:\w+\s+)?(?:possible|possibly|suspected|"
    r"questioned|questionable|considered|likely|unlikely|probable|a consideration|a concern|"
    r"in the differential)|versus|vs\.?|or not|(?:could|cannot|can't) be (?:distinguished|differentiated)|"
    r"(?:may|might|could|can)\s+(?:also\s+|well\s+)?be\s+(?:present|seen|noted|there))\b|"
    r"^\s*\?|^[^.,]{0,40}\?"
)

# --------------------------------------------------------------------------------------------------
# 5. Laterality
# --------------------------------------------------------------------------------------------------

_SIDE_CUT = _rx(r",|;|\band\b|\bor\b|\bwith\b|\bwithout\b|\bas well as\b|\bplus\b")
_BILATERAL = _rx(
    r"\b(?:bilateral\w*|both|bibasilar|bibasal|bi-?apical|biapical|(?:left|right)[- ](?:greater|more|larger|worse|"
    r"slightly greater|much greater)(?: than| >)[- ](?:left|right)|(?:left|right)\s*>\s*(?:left|right)|"
    r"left and right|right and left)\b"
)
_LEFT = _rx(r"\b(?:left|lt|l(?:ll|ul)|lingula\w*|left-sided)\b")
_RIGHT = _rx(r"\b(?:right|rt|r(?:ll|ml|ul)|right-sided)\b")
_ADJ_BOTH = _rx(
    r"\b(?:left|right)\s+(?:and|or|greater than|more than|larger than|worse than|>)\s+(?:right|left)\b"
    r"(?:\s+[\w-]+){0,4}\s*$"
)
_POST_SIDE = _rx(
    r"^[\s,]*(?:(?:is|are|was|were)\s+(?:(?:again|now|also|seen|noted|present|identified|demonstrated)\s+){0,2})?"
    r"(?:(?:on|at|in|of|involving|within|along|over|at)\s+(?:the\s+|both\s+)?)?"
    r"(?:(?:lower|upper|mid|middle)\s+)?"
    r"(bilateral(?:ly)?|both|left|right|lt|rt|lingula|r[lmu]l|l[lu]l)\b(?!\s+(?:\w+\s+){0,3}?(?:lobe|lung|base|hemithorax|apex|side)?\s*"
    r"(?:atelecta|consolidat|effusion|pneumothora))"
)


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelResult:
    """What :func:`label_report_full` extracts from one text.

    ``labels``: the 14 CheXpert labels -> 1.0 / 0.0 / -1.0 / None.
    ``laterality``: Pleural Effusion, Pneumothorax, Consolidation, Atelectasis -> "left" / "right" /
    "bilateral" / None (None when the finding is not positive or uncertain, or no side is named).
    ``laterality_conflict``: findings whose mentions name different single sides (see module doc).
    ``refusal``: the text declined the task; every label is then None.
    """

    labels: dict[str, float | None]
    laterality: dict[str, str | None]
    laterality_conflict: frozenset[str] = frozenset()
    refusal: bool = False


def _empty_result(refusal: bool) -> LabelResult:
    return LabelResult(
        labels={name: None for name in CHEXPERT_LABELS},
        laterality={name: None for name in LATERAL_FINDINGS},
        laterality_conflict=frozenset(),
        refusal=refusal,
    )


# --------------------------------------------------------------------------------------------------
# The labeler
# --------------------------------------------------------------------------------------------------


def _prepare(text: str) -> str:
    text = _TAGS.sub(" .\n\n", text)
    return report_body(text).lower()


def _clause_bounds(text: str) -> tuple[list[int], list[int]]:
    """Sorted clause starts and ends (character offsets). A punctuation boundary is left out of both
    clauses; a boundary word ("but", "there is", ...) starts the next clause."""
    starts, ends = [0], []
    for m in _BOUNDARY.finditer(text):
        b, e = m.span()
        ends.append(b)
        starts.append(e if text[b] in ".;:!\n" else b)
    ends.append(len(text))
    return starts, ends


def _negated_before(pre: str, post: str = "") -> bool:
    """True when a negation cue in ``pre`` (clause text before the mention) reaches the mention.

    The cue reaches across a comma-separated list unless a comma starts a new assertion (", small
    left effusion"). In a coordinated "or" list ("no focal consolidation, suspicious opacity, large
    effusion, or pneumothorax", the "or" before or after the mention) only a strong assertion
    (", there", ", possible", ", new", ...) ends it."""
    last = None
    for last in _PRE_NEG.finditer(pre):
        pass
    if last is None:
        return False
    span = pre[last.end() :]
    if _NEW_ASSERTION.search(span) is None:
        return True
    if _STRONG_ASSERTION.search(span) is not None:
        return False
    if _OR_LIST.search(span):
        return True
    strong = _STRONG_ASSERTION.search(post)
    return _OR_LIST.search(post, 0, strong.start() if strong else len(post)) is not None


def _uncertain_before(pre: str) -> bool:
    last = None
    for last in _PRE_UNC.finditer(pre):
        pass
    if last is None:
        return False
    # "possible small effusion" -> uncertain; "possible effusion, left pneumothorax" -> pneumothorax not.
    return _NEW_ASSERTION.search(pre, last.end()) is None or last.group(0) in ("versus", "vs", "vs.")


@functools.lru_cache(maxsize=4096)
def _clause_negated_uncertain(clause: str) -> bool:
    """Whether the clause holds a negated-uncertainty cue (one search per clause, not per mention)."""
    return _NEG_UNCERTAIN.search(clause) is not None


def _status(pre: str, post: str, clause: str) -> float:
    if _clause_negated_uncertain(clause):
        return UNCERTAIN
    if _negated_before(pre, post) or _negated_after(post):
        return NEGATIVE
    if _uncertain_before(pre) or _POST_UNC.search(post):
        return UNCERTAIN
    return POSITIVE


def _attribute_status(pre: str, post: str, clause: str) -> float | None:
    """Heart size / mediastinal contour phrase: its nearest size qualifier in the same comma-separated
    part (after the mention first, then before it) decides: normal -> 0, borderline -> -1, abnormal ->
    the mention's status (1, or -1/0 when hedged or negated), none -> None (not a mention)."""
    comma = post.find(",")
    after = post[: comma if comma >= 0 else 80][:80]
    cut = 0
    for m in _ATTR_CUT_PRE.finditer(pre):
        cut = m.end()
    before = pre[max(cut, len(pre) - 40) :]
    for part, qualifiers in ((after, None), (before, None)):
        qualifiers = [m for m in _QUALIFIER.finditer(part) if m.lastgroup != "silent"]
        if part is before:
            qualifiers.reverse()  # nearest to the mention first
        if qualifiers:
            q = qualifiers[0]
            if q.lastgroup == "normal":
                return NEGATIVE
            if q.lastgroup == "borderline":
                return UNCERTAIN
            if part is after and _PRE_UNC.search(after, 0, q.start()):  # "the heart may be enlarged"
                return UNCERTAIN
            return _status(pre, post, clause)
    return None


def _side_of(text: str, start: int, end: int, cstart: int, cend: int) -> str | None:
    """The side named for the mention text[start:end] inside its clause text[cstart:cend]."""
    inside = text[start:end]
    if _BILATERAL.search(inside):
        return "bilateral"
    if _LEFT.search(inside):
        return "left"
    if _RIGHT.search(inside):
        return "right"
    pre_full = text[cstart:start]
    if _ADJ_BOTH.search(pre_full[-80:]):
        return "bilateral"
    cut = 0
    for cut_m in _SIDE_CUT.finditer(pre_full):
        cut = cut_m.end()
    pre = pre_full[cut:]
    if _BILATERAL.search(pre):
        return "bilateral"
    left, right = bool(_LEFT.search(pre)), bool(_RIGHT.search(pre))
    if left and right:
        return "bilateral"
    if left:
        return "left"
    if right:
        return "right"
    post = text[end:cend][:60]
    m = _POST_SIDE.search(post)
    if m:
        word = m.group(1)
        if word.startswith(("bilateral", "both")):
            return "bilateral"
        rest = post[m.end() :]
        if re.match(r"\s*(?:greater|more|larger|worse|>|and)\s+(?:than\s+)?(?:left|right)", rest):
            return "bilateral"
        return "left" if word in ("left", "lt", "lingula", "lll", "lul") else "right"
    return _inherited_side(pre_full, cut)


_INHERIT_FROM = _rx(r"\b(?:opaci\w*|densit\w*|air[ -]?space (?:disease|process)|infiltrat\w*|effusions?)\b")
_INHERIT_CUE = _rx(r"\b(?:adjacent|associated|overlying|subjacent|underlying)\b")


def _inherited_side(pre_full: str, cut: int) -> str | None:
    """The side a mention takes from the part of its clause before it, when it names none itself: an
    appositive explaining a sided opacity ("left lower lobe opacity, atelectasis versus consolidation",
    "right basilar opacity, likely atelectasis") or a finding "adjacent to"/"associated with" a sided one
    ("small left effusion and adjacent atelectasis")."""
    if cut == 0:
        return None
    before, own = pre_full[:cut], pre_full[cut:]
    prev_start = 0
    for m in _SIDE_CUT.finditer(before[:-1]):
        prev_start = m.end()
    previous = before[prev_start:]
    if not (_INHERIT_CUE.search(own) or (before.rstrip().endswith(",") and _INHERIT_FROM.search(previous))):
        return None
    if _BILATERAL.search(previous):
        return "bilateral"
    left, right = bool(_LEFT.search(previous)), bool(_RIGHT.search(previous))
    if left and right:
        return "bilateral"
    return "left" if left else "right" if right else None


# A nodule or opacity that the same clause explains as something outside the lung (a pseudolesion):
# "nodular density over the left 4th rib represents a healing rib fracture", "... is felt to represent
# confluence of overlapping vessels", "... likely nipple shadow", "... secondary to summation of
# structures" -> Lung Lesion negative. Granulomas are lesions and are not explained away. The opacity or
# density itself stays a Lung Opacity mention (an apparent opacity was seen; IU-Xray's indexers tag it too).
_PSEUDO_LABELS = frozenset({"Lung Lesion"})
_EXPLAINED_AWAY = _rx(
    r"[^;]{0,120}?\b(?:represent\w*|reflect\w*|due to|secondary to|caused by|related to|consistent with|"
    r"compatible with|likely|probably|most likely)\s+(?:[\w-]+\s+){0,4}?(?:artifact\w*|fractur\w*|callus|overlap\w*|"
    r"superimpos\w*|summation|confluence|nipples?(?: shadows?)?|costochondral|bone island|"
    r"end[- ]on (?:vessel|vascular)\w*)\b"
)

_AGG_RANK = {None: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}


def _merge(current: float | None, new: float | None) -> float | None:
    return new if _AGG_RANK[new] > _AGG_RANK[current] else current


# Every mention regex at once: a clause that matches none of them has no findings (fast prefilter).
_ANY_MENTION = re.compile(
    "|".join([rx.pattern for rx in _MENTION_RX.values()] + [_HEART.pattern, _MEDIASTINUM.pattern, _OTHER_FINDINGS.pattern])
)
_CLAUSE_CACHE_SIZE = 1 << 17


@functools.lru_cache(maxsize=_CLAUSE_CACHE_SIZE)
def _clause_findings(clause: str) -> tuple[tuple[tuple[str, float | None], ...], tuple[tuple[str, str], ...]]:
    """What one clause says: ``((label, status), ...)`` and ``((finding, side), ...)``.

    Every rule (mentions, negation and uncertainty cues, attribute qualifiers, laterality) looks only
    inside the mention's own clause, so a clause gives the same findings wherever it appears. Reports
    and teacher completions repeat clauses heavily ("no pleural effusion or pneumothorax"), so this is
    cached per distinct clause text.
    """
    if _ANY_MENTION.search(clause) is None:
        return (), ()
    statuses: list[tuple[str, float | None]] = []
    sides: list[tuple[str, str]] = []
    end = len(clause)
    for name, rx in _MENTION_RX.items():
        for m in rx.finditer(clause):
            status = _status(clause[: m.start()], clause[m.end() :], clause)
            if name in _PSEUDO_LABELS and status != NEGATIVE and _EXPLAINED_AWAY.match(clause, m.end()):
                status = NEGATIVE  # a pseudonodule: "nodular density ... represents a healing rib fracture"
            statuses.append((name, status))
            if name in _SIDED and status in (POSITIVE, UNCERTAIN):
                side = _side_of(clause, m.start(), m.end(), 0, end)
                if side:
                    sides.append((name, side))
    for name, rx in (("Cardiomegaly", _HEART), ("Enlarged Cardiomediastinum", _MEDIASTINUM)):
        for m in rx.finditer(clause):
            statuses.append((name, _attribute_status(clause[: m.start()], clause[m.end() :], clause)))
    # other abnormalities matter only for No Finding, which a positive/uncertain finding here already decides
    if not any(st in _RELEVANT for name, st in statuses if name not in _NOT_FINDINGS):
        for m in _OTHER_FINDINGS.finditer(clause):
            status = _status(clause[: m.start()], clause[m.end() :], clause)
            if status in _RELEVANT:
                statuses.append((OTHER_FINDING, status))
                break
    return tuple(statuses), tuple(sides)


MAX_CLAUSE_CHARS = 600  # no real clause is this long; degenerate generations (no punctuation) are


def _bounded(clause: str):
    """The clause, or for a degenerate run-on longer than MAX_CLAUSE_CHARS, windows of it cut at spaces.

    Rules scan the text around each mention in its clause, so cost grows with mentions x clause length;
    a model that repeats "cardiomegaly" 1,000 times without a full stop would take minutes. Clauses of
    normal length are untouched, so labels of real text do not change.
    """
    if len(clause) <= MAX_CLAUSE_CHARS:
        yield clause
        return
    start = 0
    while start < len(clause):
        end = start + MAX_CLAUSE_CHARS
        if end < len(clause):
            cut = clause.rfind(" ", start + 1, end)
            end = cut if cut > start else end
        yield clause[start:end]
        start = end


_SIDED = frozenset(LATERAL_FINDINGS)
_NOT_FINDINGS = frozenset({"No Finding", "Support Devices"})
_RELEVANT = (POSITIVE, UNCERTAIN)


def _resolve_laterality(sides) -> tuple[dict[str, str | None], frozenset[str]]:
    """One side per lateral finding from the sides its mentions named: none -> None, one -> that side, a
    "bilateral" mention or both sides -> "bilateral"; both sides without a "bilateral" mention is a conflict."""
    laterality: dict[str, str | None] = {}
    conflict = set()
    for name in LATERAL_FINDINGS:
        found = set(sides[name])
        if not found:
            laterality[name] = None
        elif "bilateral" in found or len(found) > 1:
            laterality[name] = "bilateral"
            if "bilateral" not in found:
                conflict.add(name)
        else:
            laterality[name] = next(iter(found))
    return laterality, frozenset(conflict)

def _label_body(body: str) -> LabelResult:
    """Label prepared (lower-cased, body-only) text: clause by clause, then aggregated."""
    starts, ends = _clause_bounds(body)
    labels: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    sides: dict[str, set[str]] = {name: set() for name in LATERAL_FINDINGS}
    rank = _AGG_RANK
    other = False  # an abnormality outside the 13 findings was stated (positive or uncertain)
    for clause in (piece for cs, ce in zip(starts, ends) for piece in _bounded(body[cs:ce])):
        statuses, clause_sides = _clause_findings(clause)
        for name, status in statuses:
            if name is OTHER_FINDING:
                other = True
            elif rank[status] > rank[labels[name]]:
                labels[name] = status
        for name, side in clause_sides:
            sides[name].add(side)

    labels["No Finding"] = None if other or any(
        labels[n] in _RELEVANT for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")
    ) else POSITIVE

    laterality, conflict = _resolve_laterality(sides)
    return LabelResult(labels=labels, laterality=laterality, laterality_conflict=conflict)


def clear_clause_cache() -> None:
    """Empty the per-clause cache (for timing a cold labeler; results never depend on it)."""
    _clause_findings.cache_clear()


def clauses(text: str) -> list[str]:
    """The clauses the labeler reads in ``text``: the image-describing sections (see
    :func:`report_body`), lower-cased, cut at the clause boundaries of the module docs (degenerate
    run-ons windowed); empty clauses left out. Other readers of report text (the MS-CXR-T progression
    reader) use these so that every reader sees the same clauses."""
    body = _prepare(text)
    starts, ends = _clause_bounds(body)
    return [piece for cs, ce in zip(starts, ends) for piece in _bounded(body[cs:ce]) if piece.strip()]


def clause_statuses(clause: str, label: str) -> list[float | None]:
    """The status of every mention of ``label`` in one clause (from :func:`clauses`), as the labeler
    reads it (1.0 / 0.0 / -1.0; None for an attribute phrase without a size qualifier)."""
    if label not in CHEXPERT_LABELS:
        raise ValueError(f"unknown label {label!r}")
    return [status for name, status in _clause_findings(clause)[0] if name == label]


def mentions(clause: str, label: str) -> bool:
    """Whether ``clause`` mentions ``label`` (a finding of the mention lexicon)."""
    rx = _MENTION_RX.get(label)
    if rx is None:
        raise ValueError(f"no mention lexicon for {label!r}")
    return rx.search(clause) is not None


def label_report_full(text: str) -> LabelResult:
    """Label one report or teacher completion: 14 CheXpert labels, laterality and conflicts.

    ``text`` must be a ``str``; bytes or other types raise :class:`~cxr_max.errors.DataError`.
    Empty text and refusals give every label None.
    """
    if not isinstance(text, str):
        raise DataError(f"label_report expects str, got {type(text).__name__}")
    if is_refusal(text):
        return _empty_result(True)
    body = _prepare(text)
    if not _HAS_LETTER.search(body):
        return _empty_result(False)
    return _label_body(body)


_HAS_LETTER = re.compile(r"[a-z]")


def label_report(text: str) -> dict[str, float | None]:
    """The 14 CheXpert labels of one text (1.0 positive, 0.0 negative, -1.0 uncertain, None not
    mentioned). See :func:`label_report_full` and the module docstring for the rules."""
    return label_report_full(text).labels


def label_reports_full(texts: Iterable[str], *, progress: bool = False) -> list[LabelResult]:
    """:func:`label_report_full` over many texts, in order. A non-str item raises DataError naming its
    index. Identical texts are labelled once; each copy gets its own result (own dicts)."""
    items = texts if isinstance(texts, Sequence) else list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise DataError(f"expected str, got {type(text).__name__}", path="texts", row=i)
    unique = list(dict.fromkeys(items))
    iterator: Iterable[str] = unique
    if progress:
        from rich.progress import track

        iterator = track(unique, total=len(unique), description=f"labelling {len(unique):,} distinct texts")
    done = {text: label_report_full(text) for text in iterator}
    out: list[LabelResult] = []
    seen: set[str] = set()
    for text in items:
        res = done[text]
        if text in seen:  # a repeat: same values, separate dicts, so callers may edit one row safely
            res = dataclasses.replace(res, labels=dict(res.labels), laterality=dict(res.laterality))
        seen.add(text)
        out.append(res)
    return out


def label_reports(texts: Iterable[str], *, progress: bool = False) -> list[dict[str, float | None]]:
    """:func:`label_report` over many texts (a list of 14-label dicts, in order)."""
    return [r.labels for r in label_reports_full(texts, progress=progress)]


def labels_to_arrow(results: Sequence[LabelResult | dict]):
    """A ``pyarrow.StructArray`` of type :data:`cxr_max.labels.LABELS_TYPE`."""
    import pyarrow as pa

    from cxr_max.labels import LABELS_TYPE

    rows = [r.labels if isinstance(r, LabelResult) else r for r in results]
    return pa.array(rows, type=LABELS_TYPE)


def laterality_to_arrow(results: Sequence[LabelResult]):
    """A ``pyarrow.StructArray`` of type :data:`cxr_max.trajectories.schema.LATERALITY_TYPE`."""
    import pyarrow as pa

    from cxr_max.trajectories.schema import LATERALITY_TYPE

    return pa.array([r.laterality for r in results], type=LATERALITY_TYPE)
