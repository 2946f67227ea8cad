# perl pingpong.pl ADDRESS STOP: a long-lived ping-pong client on ADDRESS
# until the file STOP exists; prints how many answers came.
use strict; use warnings;
use IO::Socket::INET;
my ($address, $stop) = @ARGV;
my $socket = IO::Socket::INET->new(PeerAddr => $address, Timeout => 5) or die "connect: $!";
my $pending = "";
sub line {
    while ($pending !~ /\n/) {
        my $n = sysread($socket, my $buffer, 4096);
        die "read: $!" unless defined $n;
        die "closed while waiting for $_[0]" if $n == 0;
        $pending .= $buffer;
    }
    $pending =~ s/^([^\n]*\n)//;
    return $1;
}
line("the greeting");
my $count = 0;
until (-e $stop) {
    $count++;
    syswrite($socket, "ping $count\n") or die "write: $!";
    my $reply = line("ping $count");
    die "got '$reply' for ping $count" unless $reply eq "ping $count\n";
    select(undef, undef, undef, 0.01);
}
print "answered $count\n";
