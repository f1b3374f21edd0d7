"""
Quartz cron expressions, as the C{deleteWhen} key uses them.

Fields: seconds, minutes, hours, day-of-month, month, day-of-week and an
optional year, each C{*}, a value, a range C{a-b}, a step C{a/n} or
C{a-b/n}, or a comma-separated list of those.  Months and days of the week
may be named (C{JAN}, C{MON}); days of the week count from 1 = Sunday.  As in
Quartz exactly one of day-of-month and day-of-week must be C{?} ("no
specific value").  The special characters C{L}, C{W} and C{#} are not
supported and are rejected with a clear message.

Times are local wall-clock times, as Quartz uses the JVM's default time zone.
"""

import datetime

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]

# (field name, lowest value, highest value, names of the values from lowest)
_FIELDS = [
    ("seconds", 0, 59, None),
    ("minutes", 0, 59, None),
    ("hours", 0, 23, None),
    ("day-of-month", 1, 31, None),
    ("month", 1, 12, MONTHS),
    ("day-of-week", 1, 7, DAYS),
    ("year", 1970, 2099, None),
]


class InvalidCronExpression(ValueError):
    """
    A C{deleteWhen} value that is not a supported Quartz cron expression.
    """


def _value(text, lowest, highest, names, fieldName):
    if names is not None and text.upper() in names:
        return lowest + names.index(text.upper())
    if not text.isdigit():
        if any(special in text.upper() for special in "LW#"):
            raise InvalidCronExpression(
                "Unsupported special character in %s value %r (L, W and # are "
                "not implemented)" % (fieldName, text)
            )
        raise InvalidCronExpression("Invalid %s value %r" % (fieldName, text))
    value = int(text)
    if not lowest <= value <= highest:
        raise InvalidCronExpression(
            "%s value %d out of range %d-%d" % (fieldName, value, lowest, highest)
        )
    return value


def _parseField(text, lowest, highest, names, fieldName):
    """
    The set of values a field allows, or L{None} for C{?}.
    """
    if text == "?":
        return None
    values = set()
    for part in text.split(","):
        rangeText, slash, stepText = part.partition("/")
        step = 1
        if slash:
            if not stepText.isdigit() or int(stepText) == 0:
                raise InvalidCronExpression("Invalid step %r in %s" % (stepText, fieldName))
            step = int(stepText)
        if rangeText == "*" or rangeText == "":
            first, last = lowest, highest
        elif "-" in rangeText:
            a, _, b = rangeText.partition("-")
            first = _value(a, lowest, highest, names, fieldName)
            last = _value(b, lowest, highest, names, fieldName)
        else:
            first = _value(rangeText, lowest, highest, names, fieldName)
            last = highest if slash else first
        if last < first:
            # Quartz ranges wrap: 22-2 is 22, 23, 0, 1, 2.
            span = list(range(first, highest + 1)) + list(range(lowest, last + 1))
        else:
            span = list(range(first, last + 1))
        values.update(span[::step])
    return frozenset(values)


class CronExpression:
    """
    A parsed Quartz cron expression.
    """

    def __init__(self, text):
        self.text = text
        parts = text.split()
        if len(parts) not in (6, 7):
            raise InvalidCronExpression(
                "Cron expression %r has %d fields; expected 6 or 7 "
                "(seconds minutes hours day-of-month month day-of-week [year])"
                % (text, len(parts))
            )
        if len(parts) == 6:
            parts.append("*")
        (
            self.seconds,
            self.minutes,
            self.hours,
            self.daysOfMonth,
            self.months,
            self.daysOfWeek,
            self.years,
        ) = [
            _parseField(part, lowest, highest, names, name)
            for part, (name, lowest, highest, names) in zip(parts, _FIELDS)
        ]
        if (self.daysOfMonth is None) == (self.daysOfWeek is None):
            raise InvalidCronExpression(
                "Cron expression %r: exactly one of day-of-month and "
                "day-of-week must be '?'" % (text,)
            )
        for name, values in [
            ("seconds", self.seconds),
            ("minutes", self.minutes),
            ("hours", self.hours),
            ("month", self.months),
            ("year", self.years),
        ]:
            if values is None:
                raise InvalidCronExpression(
                    "'?' is only allowed in day-of-month or day-of-week, not %s" % (name,)
                )

    def _dayMatches(self, day):
        if day.month not in self.months or day.year not in self.years:
            return False
        if self.daysOfMonth is not None:
            return day.day in self.daysOfMonth
        return (day.weekday() + 1) % 7 + 1 in self.daysOfWeek

    def _firstTimeOfDay(self, notBefore):
        """
        The earliest allowed time of day at or after C{notBefore} (a
        L{datetime.time}), or L{None}.
        """
        for hour in sorted(self.hours):
            if hour < notBefore.hour:
                continue
            for minute in sorted(self.minutes):
                if hour == notBefore.hour and minute < notBefore.minute:
                    continue
                for second in sorted(self.seconds):
                    if (hour, minute) == (notBefore.hour, notBefore.minute) and (
                        second < notBefore.second
                    ):
                        continue
                    return datetime.time(hour, minute, second)
        return None

    def nextFireTime(self, after):
        """
        The first time strictly after C{after} (a naive local
        L{datetime.datetime}) that the expression matches, or L{None} if
        there is none before the end of 2099.
        """
        start = after.replace(microsecond=0) + datetime.timedelta(seconds=1)
        day = start.date()
        notBefore = start.time()
        while day.year <= 2099:
            if self._dayMatches(day):
                time = self._firstTimeOfDay(notBefore)
                if time is not None:
                    return datetime.datetime.combine(day, time)
            day += datetime.timedelta(days=1)
            notBefore = datetime.time(0, 0, 0)
        return None

    def __repr__(self):
        return "CronExpression(%r)" % (self.text,)
